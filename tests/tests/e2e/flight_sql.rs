//! Arrow Flight SQL on the researcher API: the same answers as the native API, with the
//! sites' statuses in the schema metadata; prepared statements; the catalog calls; and every
//! refusal immediate, with the right code. Each call has 5 s: a hang fails the test.

use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::{FlightInfo, IpcMessage};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, UInt32Type};
use futures::TryStreamExt;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use verbund_tests::{Network, PROJECT, Synthetic, open_policy};

const SQL: &str = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex";

type Client = FlightSqlServiceClient<Channel>;

/// `call`, failing the test if it takes more than 5 s.
async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), call).await.unwrap_or_else(|_| panic!("{what}: no answer in 5 s"))
}

/// The gRPC code and message of a failed call.
fn status(what: &str, result: Result<impl std::fmt::Debug, FlightError>) -> (Code, String) {
    match result {
        Err(FlightError::Tonic(s)) => (s.code(), s.message().to_string()),
        other => panic!("{what}: expected a gRPC error, got {other:?}"),
    }
}

/// Three synthetic sites, every one answering exactly (k = 1).
async fn network() -> (Synthetic, Network) {
    let data = Synthetic::new(20261130, 0.05).await.unwrap();
    let network = data.network(open_policy(1), &[]).await.unwrap();
    (data, network)
}

/// The batches behind a FlightInfo's one endpoint, and the stream's schema.
async fn fetch(client: &mut Client, info: &FlightInfo) -> Result<(SchemaRef, RecordBatch), FlightError> {
    assert_eq!(info.endpoint.len(), 1, "one endpoint");
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    let mut stream = within("DoGet", client.do_get(ticket)).await?;
    let batches: Vec<RecordBatch> = within("DoGet stream", (&mut stream).try_collect()).await?;
    let schema = stream.schema().cloned().expect("the stream's schema");
    let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
    Ok((schema, batch))
}

/// The same table without schema metadata (the native answer carries none).
fn plain(batch: &RecordBatch) -> RecordBatch {
    let schema = std::sync::Arc::new(Schema::new(batch.schema().fields().clone()));
    RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap()
}

fn assert_metadata(what: &str, schema: &Schema, query_id: Option<&str>, sites: &[&str]) {
    let m = schema.metadata();
    let id = m.get(verbund_coordinator::flight::QUERY_ID).unwrap_or_else(|| panic!("{what}: no query id in {m:?}"));
    if let Some(expected) = query_id {
        assert_eq!(id, expected, "{what}");
    }
    assert_eq!(m.get(verbund_coordinator::flight::COMPLETE).map(String::as_str), Some("true"), "{what}");
    let listed: serde_json::Value = serde_json::from_str(&m[verbund_coordinator::flight::SITES]).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), sites.len(), "{what}: {listed:?}");
    for site in sites {
        let s = listed.iter().find(|s| s["site"] == *site).unwrap_or_else(|| panic!("{what}: {site} not listed"));
        assert_eq!(s["status"], "answered", "{what}: {s}");
        for key in ["message", "elapsed_ms", "groups", "profile", "cost"] {
            assert!(s.get(key).is_some(), "{what}: {key} missing in {s}");
        }
    }
    let notes: Vec<String> = serde_json::from_str(&m[verbund_coordinator::flight::NOTES]).unwrap();
    assert!(!notes.is_empty(), "{what}: the notes are there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_answers_as_the_native_query_does() {
    let (data, network) = network().await;
    let sites: Vec<&str> = data.sites.iter().map(|s| s.site.as_str()).collect();
    let (native, _) = network.query(SQL).await.unwrap();
    let mut client = network.flight_client().await;
    let info = within("execute", client.execute(SQL.into(), None)).await.unwrap();
    assert_eq!(info.total_records, native.num_rows() as i64);
    assert!(info.ordered);
    let info_schema = info.clone().try_decode_schema().unwrap();
    assert_metadata("FlightInfo schema", &info_schema, None, &sites);
    let query_id = info_schema.metadata()[verbund_coordinator::flight::QUERY_ID].clone();
    let (schema, batch) = fetch(&mut client, &info).await.unwrap();
    assert_metadata("DoGet schema", &schema, Some(&query_id), &sites);
    assert_eq!(plain(&batch), native, "Flight SQL and the native API answer alike");
    // The ticket can be fetched again.
    let (_, again) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(plain(&again), native);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_runs_as_a_statement() {
    let (_data, network) = network().await;
    let (native, _) = network.query(SQL).await.unwrap();
    let mut client = network.flight_client().await;
    let mut prepared = within("prepare", client.prepare(SQL.into(), None)).await.unwrap();
    let dataset = prepared.dataset_schema().unwrap().clone();
    assert_eq!(dataset.fields(), native.schema().fields(), "planned schema = the answer's schema");
    assert!(prepared.parameter_schema().unwrap().fields().is_empty());
    let info = within("execute prepared", prepared.execute()).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(plain(&batch), native);
    within("close", prepared.clone().close()).await.unwrap();

    // Parameters are refused, with what to do instead.
    let params = RecordBatch::try_from_iter([(
        "p",
        std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])) as _,
    )])
    .unwrap();
    prepared.set_parameters(params).unwrap();
    let (code, message) = status("bind", within("bind", prepared.execute()).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("take no parameters"), "{message}");

    // The planner's error comes back when preparing.
    let (code, message) =
        status("bad SQL", within("prepare bad", client.prepare("SELECT nope FROM patients".into(), None)).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("nope"), "{message}");
}

/// The one string column of a metadata answer.
fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch.column_by_name(column).unwrap_or_else(|| panic!("no column {column}"));
    let array = array.as_string::<i32>();
    (0..array.len()).map(|i| array.value(i).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_calls_list_the_projects_datasets() {
    let (_data, network) = network().await;
    let mut client = network.flight_client().await;

    let info = within("GetCatalogs", client.get_catalogs()).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(strings(&batch, "catalog_name"), [PROJECT]);

    let schemas = CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None };
    let info = within("GetDbSchemas", client.get_db_schemas(schemas)).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(strings(&batch, "db_schema_name"), ["datasets"]);

    let tables = CommandGetTables {
        catalog: Some(PROJECT.into()),
        db_schema_filter_pattern: None,
        table_name_filter_pattern: Some("pat%".into()),
        table_types: vec![],
        include_schema: true,
    };
    let info = within("GetTables", client.get_tables(tables)).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(strings(&batch, "table_name"), ["patients"], "the name filter applies");
    assert_eq!(strings(&batch, "table_type"), ["TABLE"]);
    let schema_bytes = batch.column_by_name("table_schema").unwrap().as_binary::<i32>().value(0).to_vec();
    let schema = Schema::try_from(IpcMessage(schema_bytes.into())).unwrap();
    assert_eq!(schema.field_with_name("age").unwrap().data_type(), &DataType::Int64, "{schema:?}");
    assert_eq!(schema.field_with_name("sex").unwrap().data_type(), &DataType::Utf8);

    let info = within("GetTableTypes", client.get_table_types()).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    assert_eq!(strings(&batch, "table_type"), ["TABLE"]);

    let asked =
        vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly, SqlInfo::FlightSqlServerTransaction];
    let info = within("GetSqlInfo", client.get_sql_info(asked)).await.unwrap();
    let (_, batch) = fetch(&mut client, &info).await.unwrap();
    let names = batch.column_by_name("info_name").unwrap().as_primitive::<UInt32Type>();
    let mut names: Vec<u32> = names.values().to_vec();
    names.sort();
    assert_eq!(names, [0, 3, 8]);
    let values = batch.column_by_name("value").unwrap().as_union();
    let name_row = batch.column(0).as_primitive::<UInt32Type>().values().iter().position(|n| *n == 0).unwrap();
    let name = values.value(name_row);
    assert_eq!(name.as_string::<i32>().value(0), "verbund coordinator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_tickets_are_checked() {
    let (_data, network) = network().await;

    let mut anonymous = network.flight_client_without_token().await;
    let (code, message) = status("no token", within("no token", anonymous.execute(SQL.into(), None)).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");

    anonymous.set_token("not-a-jwt".into());
    let (code, message) = status("bad token", within("bad token", anonymous.execute(SQL.into(), None)).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let (code, _) = status("bad token catalogs", within("bad token", anonymous.get_catalogs()).await);
    assert_eq!(code, Code::Unauthenticated);

    // A user name and password are refused, saying what to send instead.
    let handshake = |authorization: String| {
        let mut request = tonic::Request::new(futures::stream::iter(vec![arrow_flight::HandshakeRequest::default()]));
        request.metadata_mut().insert("authorization", authorization.parse().unwrap());
        request
    };
    let mut basic = network.flight_client_without_token().await;
    let refused = within("handshake", basic.inner_mut().handshake(handshake("Basic YWxpY2U6c2VjcmV0".into()))).await;
    let refused = refused.expect_err("basic auth is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("bearer token"), "{refused}");

    // A valid bearer is echoed back (as Flight clients expect after a handshake).
    let token = network.pki.token();
    let mut bearer = network.flight_client_without_token().await;
    let response =
        within("handshake", bearer.inner_mut().handshake(handshake(format!("Bearer {token}")))).await.unwrap();
    assert_eq!(response.metadata().get("authorization").unwrap().to_str().unwrap(), format!("Bearer {token}"));

    // Alice's ticket is worth nothing to Bob, in the same project.
    let mut alice = network.flight_client().await;
    let info = within("execute", alice.execute(SQL.into(), None)).await.unwrap();
    let mut bob = network.flight_client_without_token().await;
    bob.set_token(network.pki.issuer.issue("bob", &[PROJECT], &["researcher"], Duration::from_secs(600)));
    let (code, message) = status("bob's DoGet", fetch(&mut bob, &info).await);
    assert_eq!(code, Code::NotFound, "{message}");
    fetch(&mut alice, &info).await.expect("alice's own ticket");

    // A token granting several projects must name one.
    let mut carol = network.flight_client_without_token().await;
    carol.set_token(network.pki.issuer.issue("carol", &[PROJECT, "other"], &["researcher"], Duration::from_secs(600)));
    let (code, message) = status("no project", within("no project", carol.execute(SQL.into(), None)).await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("other"), "lists the granted projects: {message}");
    carol.set_header(verbund_coordinator::flight::PROJECT_HEADER, PROJECT);
    let info = within("with project", carol.execute(SQL.into(), None)).await.unwrap();
    fetch(&mut carol, &info).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_transactions_are_unimplemented() {
    let (_data, network) = network().await;
    let mut client = network.flight_client().await;
    let (code, message) =
        status("update", within("update", client.execute_update("DELETE FROM patients".into(), None)).await);
    assert_eq!(code, Code::Unimplemented, "{message}");
    assert!(message.contains("read-only"), "{message}");
    let (code, message) = status("transaction", within("begin", client.begin_transaction()).await);
    assert_eq!(code, Code::Unimplemented, "{message}");
    assert!(message.contains("no transactions"), "{message}");
    let keys = arrow_flight::sql::CommandGetPrimaryKeys { catalog: None, db_schema: None, table: "patients".into() };
    let (code, _) = status("primary keys", within("keys", client.get_primary_keys(keys)).await);
    assert_eq!(code, Code::Unimplemented);
}
