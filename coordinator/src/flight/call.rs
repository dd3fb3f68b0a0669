//! The pieces every Flight SQL call shares: the verbund headers, the project, schemas as
//! Arrow IPC, one batch as a DoGet stream, and refusals.

use super::{DoGetStream, FlightSql, PROJECT_HEADER, SITES_HEADER, TIMEOUT_HEADER};
use crate::RequestError;
use crate::api::authenticate;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::ProstMessageExt;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use arrow_flight::{IpcMessage, SchemaAsIpc};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use verbund_security::token::Claims;

pub(super) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The verbund headers of a call.
pub(super) struct Asked {
    pub project: String,
    pub sites: Vec<String>,
    pub timeout_ms: u32,
}

impl Asked {
    pub fn from_headers(metadata: &MetadataMap) -> Result<Self, Status> {
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
pub(super) fn project_for(claims: &Claims, asked: &str) -> String {
    match (asked, claims.projects.as_slice()) {
        ("", [only]) => only.clone(),
        (asked, _) => asked.to_string(),
    }
}

/// The Arrow IPC encapsulated form of a schema (prepared statements' schemas).
pub(super) fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(internal)?;
    Ok(bytes)
}

/// One batch as a DoGet stream, with `schema` (and its metadata) on the stream and the batch.
pub(super) fn stream_batch(schema: SchemaRef, batch: RecordBatch) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.with_schema(schema.clone()).map_err(internal)?;
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

/// Unimplemented with `why`, or Unauthenticated if the token is not valid.
pub(super) fn refuse<T>(service: &FlightSql, request: &Request<T>, why: &str) -> Status {
    match authenticate(&service.coordinator, request) {
        Err(e) => e.into(),
        Ok(_) => Status::unimplemented(why),
    }
}

impl FlightSql {
    /// The caller's verified claims, for a call that starts new work (refused while draining).
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<Claims, Status> {
        let (claims, _) = authenticate(&self.coordinator, request)?;
        if self.coordinator.is_draining() {
            return Err(RequestError::ShuttingDown.into());
        }
        Ok(claims)
    }

    /// A FlightInfo whose one endpoint's ticket is the metadata command itself.
    pub(super) fn metadata_info(
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
