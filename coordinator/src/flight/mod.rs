//! Arrow Flight SQL on the researcher API (docs/flight-sql.md): the same federated queries
//! as `Researcher.Query`, for ADBC, JDBC and other Flight SQL clients. Same listener, TLS,
//! Bearer token, access checks, quota, audit and drain as the native API; read-only, SQL
//! aggregate queries only.

mod call;
mod catalog;
mod results;

pub use results::{COMPLETE, EXPIRES, NOTES, QUERY_ID, SITES};

use crate::Coordinator;
use crate::api::{Outcome, authenticate, decode_ipc, per_site};
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
use arrow_flight::{Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket};
use call::{Asked, internal, project_for, refuse, schema_bytes, stream_batch};
use datafusion::arrow::datatypes::Schema;
use futures::Stream;
use prost::Message;
use results::{PreparedHandle, StatementHandle};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use verbund_proto::v1 as pb;

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
}

impl FlightSql {
    pub fn new(coordinator: Arc<Coordinator>) -> Result<Self, arrow_flight::error::FlightError> {
        let sql_info = catalog::sql_info(coordinator.config().max_timeout)?;
        Ok(Self { coordinator, sql_info })
    }

    /// Runs a query as `Researcher.Query` does (token, drain, metrics, audit, quota, stored
    /// answer; the client hanging up cancels it at the sites) and describes its result.
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
        let c = &self.coordinator;
        let answered = crate::api::serve(c, research, |mut query, claims, token| async move {
            query.project = project_for(&claims, &query.project);
            let response = c.query(query, &claims, &token).await?;
            // Until when DoGet can fetch it: the stored status says.
            let asked = pb::StatusRequest { query_id: response.query_id.clone(), ..Default::default() };
            let expires = c.status(&claims, asked).await.ok().map(|s| s.expires_unix_ms);
            Ok(Answered { owner: claims.sub, response, expires })
        })
        .await?
        .into_inner();
        let response = answered.response;
        let batch = decode_ipc(&response.arrow_ipc).map_err(internal)?;
        let metadata = results::metadata(&response, answered.expires);
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
}

/// A query's answer, whose it is, and until when it is stored.
struct Answered {
    owner: String,
    response: pb::QueryResponse,
    expires: Option<u64>,
}

impl Outcome for Answered {
    fn outcome(&self) -> &'static str {
        per_site(&self.response.sites)
    }
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
            return Err(refuse(self, &request, NO_TRANSACTIONS));
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
            return Err(refuse(self, &request, NO_TRANSACTIONS));
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
