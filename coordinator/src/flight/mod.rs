//! Arrow Flight SQL on the researcher API (docs/flight-sql.md): the same federated queries
//! as `Researcher.Query`, for ADBC, JDBC and other Flight SQL clients. Same listener, TLS,
//! Bearer token, access checks, quota, audit and drain as the native API; read-only, SQL
//! aggregate queries only.

mod catalog;
mod results;

pub use results::{COMPLETE, EXPIRES, KEPT_RESULTS, NOTES, QUERY_ID, SITES};

use crate::api::{PerSite, authenticate, decode_ipc};
use crate::{Coordinator, RequestError};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    ActionCreatePreparedSubstraitPlanRequest, ActionEndSavepointRequest, ActionEndTransactionRequest,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, TryStreamExt};
use prost::Message;
use results::{KeptResults, PreparedHandle, StatementHandle};
use std::pin::Pin;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use verbund_proto::v1 as pb;
use verbund_security::token::Claims;

/// The project a call belongs to (else the token's only project).
pub const PROJECT_HEADER: &str = "x-verbund-project";
/// The sites to ask, comma-separated (else every site the project may query).
pub const SITES_HEADER: &str = "x-verbund-sites";
/// The query's deadline in milliseconds (else the coordinator's default).
pub const TIMEOUT_HEADER: &str = "x-verbund-timeout-ms";

const READ_ONLY: &str = "verbund is read-only and takes SQL aggregate queries only";
const NO_SUBSTRAIT: &str = "verbund takes SQL aggregate queries only, not Substrait plans";
const NO_TRANSACTIONS: &str = "verbund has no transactions";
const NO_PARAMETERS: &str = "verbund queries take no parameters; write the constants into the SQL";
const NO_KEYS: &str = "verbund datasets have no primary or foreign keys";
const NO_CANCEL_ACTION: &str = "verbund has no CancelQuery action: end the call that runs the query (ADBC: \
     cursor.adbc_cancel()), which cancels it at the sites";
const NO_XDBC: &str =
    "verbund does not list XDBC type info; GetTables with include_schema gives each column's Arrow type";

type DoGetStream = <FlightSql as FlightService>::DoGetStream;

/// The Flight SQL service of a coordinator.
pub struct FlightSql {
    coordinator: Arc<Coordinator>,
    sql_info: arrow_flight::sql::metadata::SqlInfoData,
    kept: KeptResults,
}

impl FlightSql {
    pub fn new(coordinator: Arc<Coordinator>) -> Result<Self, arrow_flight::error::FlightError> {
        let sql_info = catalog::sql_info(coordinator.config().max_timeout)?;
        Ok(Self { coordinator, sql_info, kept: KeptResults::default() })
    }

    /// The caller's verified claims, for a call that starts new work (refused while draining).
    fn caller<T>(&self, request: &Request<T>) -> Result<Claims, Status> {
        let (claims, _) = authenticate(&self.coordinator, request)?;
        if self.coordinator.is_draining() {
            return Err(RequestError::ShuttingDown.into());
        }
        Ok(claims)
    }

    /// Runs a query as `Researcher.Query` does (token, drain, metrics, audit, quota, the
    /// client hanging up cancels it at the sites) and describes its kept result.
    async fn run(
        &self,
        sql: String,
        prepared: Option<PreparedHandle>,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let asked = Asked::from_headers(request.metadata())?;
        let (project, sites) = match prepared {
            Some(p) => (p.project, p.sites),
            None => (asked.project, asked.sites),
        };
        let query = pb::ResearchQuery { sql, project, sites, timeout_ms: asked.timeout_ms, ..Default::default() };
        let (metadata, _, descriptor) = request.into_parts();
        let research = Request::from_parts(metadata, Default::default(), query);
        let c = &*self.coordinator;
        let answered = crate::api::serve(c, research, |mut query, claims, token| async move {
            query.project = project_for(&claims, &query.project);
            let response = c.query(query, &claims, &token).await?;
            Ok(Answered { owner: claims.sub, response })
        })
        .await?
        .into_inner();
        let response = self.kept.keep(&answered.owner, answered.response);
        let batch = decode_ipc(&response.arrow_ipc).map_err(internal)?;
        let metadata = results::metadata(&response, None);
        let schema = Schema::new(batch.schema().fields().clone()).with_metadata(metadata.clone());
        let handle = StatementHandle { owner: answered.owner, query_id: response.query_id.clone() };
        let ticket = TicketStatementQuery { statement_handle: handle.encode_to_vec().into() };
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let app_metadata = serde_json::to_vec(&metadata).map_err(internal)?;
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(internal)?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(batch.num_rows() as i64)
            .with_ordered(true)
            .with_app_metadata(app_metadata);
        Ok(Response::new(info))
    }

    /// The result of `owner`'s query `query_id`, and until when it is kept (unix ms).
    async fn fetch_result(
        &self,
        claims: &Claims,
        owner: &str,
        query_id: &str,
    ) -> Result<(Arc<pb::QueryResponse>, Option<u64>), Status> {
        if claims.sub != owner {
            return Err(not_found(query_id));
        }
        let response = self.kept.get(owner, query_id).ok_or_else(|| not_found(query_id))?;
        Ok((response, None))
    }

    /// A FlightInfo whose one endpoint's ticket is the metadata command itself.
    fn metadata_info(
        &self,
        command: impl ProstMessageExt,
        schema: SchemaRef,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(internal)?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }
}

fn not_found(query_id: &str) -> Status {
    Status::not_found(format!(
        "no query '{query_id}' of yours has a result here (a Flight SQL result is kept for the last {KEPT_RESULTS} \
         queries)"
    ))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A query's answer and whose it is.
struct Answered {
    owner: String,
    response: pb::QueryResponse,
}

impl PerSite for Answered {
    fn site_statuses(&self) -> &[pb::SiteStatus] {
        &self.response.sites
    }
}

/// The verbund headers of a call.
struct Asked {
    project: String,
    sites: Vec<String>,
    timeout_ms: u32,
}

impl Asked {
    fn from_headers(metadata: &MetadataMap) -> Result<Self, Status> {
        let header = |name: &str| -> Result<&str, Status> {
            match metadata.get(name) {
                None => Ok(""),
                Some(v) => {
                    v.to_str().map(str::trim).map_err(|_| Status::invalid_argument(format!("{name} is not text")))
                }
            }
        };
        let sites =
            header(SITES_HEADER)?.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let timeout_ms = match header(TIMEOUT_HEADER)? {
            "" => 0,
            ms => ms.parse::<u32>().map_err(|_| {
                Status::invalid_argument(format!("{TIMEOUT_HEADER} is a number of milliseconds, not '{ms}'"))
            })?,
        };
        Ok(Self { project: header(PROJECT_HEADER)?.to_string(), sites, timeout_ms })
    }
}

/// The project asked for, else the token's only project; empty (refused by the access check
/// with the granted projects listed) when the token grants several.
fn project_for(claims: &Claims, asked: &str) -> String {
    match (asked, claims.projects.as_slice()) {
        ("", [only]) => only.clone(),
        (asked, _) => asked.to_string(),
    }
}

/// The Arrow IPC encapsulated form of a schema (prepared statements' schemas).
fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(internal)?;
    Ok(bytes)
}

/// One batch as a DoGet stream, with `schema` (and its metadata) on the stream and the batch.
fn stream_batch(schema: SchemaRef, batch: RecordBatch) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.with_schema(schema.clone()).map_err(internal)?;
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let basic = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().get(..6).is_some_and(|p| p.eq_ignore_ascii_case("basic ")));
        if basic {
            return Err(Status::unauthenticated("verbund takes a bearer token (JWT), not a user name and password"));
        }
        let (_, token) = authenticate(&self.coordinator, &request)?;
        let bearer = format!("Bearer {token}").parse().map_err(internal)?;
        let reply = HandshakeResponse { protocol_version: 0, payload: Default::default() };
        let mut response: Response<HandshakeStream> = Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented(NO_TRANSACTIONS));
        }
        self.run(query.query, None, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = PreparedHandle::decode_from(&query.prepared_statement_handle)?;
        self.run(prepared.sql.clone(), Some(prepared), request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        // Fetching a result is no new work: allowed while draining.
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        let handle = StatementHandle::decode_from(&ticket.statement_handle)?;
        let (response, expires) = self.fetch_result(&claims, &handle.owner, &handle.query_id).await?;
        let batch = decode_ipc(&response.arrow_ipc).map_err(internal)?;
        let schema = Schema::new(batch.schema().fields().clone()).with_metadata(results::metadata(&response, expires));
        stream_batch(Arc::new(schema), batch)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let claims = self.caller(&request)?;
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented(NO_TRANSACTIONS));
        }
        let asked = Asked::from_headers(request.metadata())?;
        let handle =
            PreparedHandle { sql: query.query, project: project_for(&claims, &asked.project), sites: asked.sites };
        let describe = pb::ResearchQuery {
            sql: handle.sql.clone(),
            project: handle.project.clone(),
            sites: handle.sites.clone(),
            ..Default::default()
        };
        let schema = self.coordinator.describe_query(&describe, &claims).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: schema_bytes(&schema)?,
            parameter_schema: schema_bytes(&Schema::empty())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        authenticate(&self.coordinator, &request)?;
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        _query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        authenticate(&self.coordinator, &request)?;
        Err(Status::invalid_argument(NO_PARAMETERS))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let claims = self.caller(&request)?;
        let batch = catalog::catalogs(&claims, query.into_builder()).map_err(internal)?;
        stream_batch(batch.schema(), batch)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let claims = self.caller(&request)?;
        let batch = catalog::schemas(&claims, query.into_builder()).map_err(internal)?;
        stream_batch(batch.schema(), batch)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let claims = self.caller(&request)?;
        let batch = catalog::tables(&self.coordinator, &claims, query.into_builder()).map_err(internal)?;
        stream_batch(batch.schema(), batch)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, schema, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.caller(&request)?;
        let mut types = query.into_builder();
        types.append(catalog::TABLE);
        let batch = types.build().map_err(internal)?;
        stream_batch(batch.schema(), batch)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(query, schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.caller(&request)?;
        let batch = query.into_builder(&self.sql_info).build().map_err(internal)?;
        stream_batch(batch.schema(), batch)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}

    // Refused: immediately, each with its reason, after the token check.

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_SUBSTRAIT))
    }

    async fn get_flight_info_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_KEYS))
    }

    async fn get_flight_info_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_KEYS))
    }

    async fn get_flight_info_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_KEYS))
    }

    async fn get_flight_info_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_KEYS))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        _query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(refuse(self, &request, NO_XDBC))
    }

    async fn do_get_prepared_statement(
        &self,
        _query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(refuse(self, &request, "execute a prepared statement with GetFlightInfo, then DoGet the ticket it returns"))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(refuse(self, &request, READ_ONLY))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(refuse(self, &request, READ_ONLY))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(refuse(self, &request, READ_ONLY))
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(refuse(self, &request, NO_SUBSTRAIT))
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(refuse(self, &request, NO_SUBSTRAIT))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(refuse(self, &request, NO_TRANSACTIONS))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        Err(refuse(self, &request, NO_TRANSACTIONS))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(refuse(self, &request, NO_TRANSACTIONS))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        Err(refuse(self, &request, NO_TRANSACTIONS))
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        Err(refuse(self, &request, NO_CANCEL_ACTION))
    }
}

/// Unimplemented with `why`, or Unauthenticated if the token is not valid.
fn refuse<T>(service: &FlightSql, request: &Request<T>, why: &str) -> Status {
    match authenticate(&service.coordinator, request) {
        Err(e) => e.into(),
        Ok(_) => Status::unimplemented(why),
    }
}
