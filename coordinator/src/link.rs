//! The coordinator's end of the node link: accepts a node's outbound stream, registers the
//! site with its catalogue, and routes results and heartbeats until the stream ends.

use crate::Coordinator;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use verbund_proto::v1 as pb;
use verbund_proto::v1::node_link_server::NodeLink;

/// How long a node has to say who it is after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const OUTBOUND_QUEUE: usize = 1024;

pub struct LinkService {
    coordinator: Arc<Coordinator>,
}

impl LinkService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// The site a connection's client certificate names. The TLS layer has already checked that
/// the certificate chains to the network CA and is valid now.
fn certified_site(certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>) -> Result<(String, i64), Status> {
    let certs = certs.ok_or_else(|| Status::unauthenticated("the link requires a site certificate (mutual TLS)"))?;
    let first = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    let info = verbund_security::certs::CertInfo::parse(first)
        .map_err(|e| Status::unauthenticated(format!("the client certificate cannot be read: {e}")))?;
    match info.identity {
        Some(site) if !site.is_empty() => Ok((site, info.not_after_unix)),
        _ => Err(Status::unauthenticated("the client certificate names no site")),
    }
}

type Outbound = Pin<Box<dyn futures::Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeLink for LinkService {
    type AttachStream = Outbound;

    async fn attach(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let remote = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let (site, cert_not_after) = certified_site(request.peer_certs())?;
        if !self.coordinator.knows_site(&site) {
            warn!(site = %site, remote = %remote, "refused a certificate for a site this network does not know");
            return Err(Status::permission_denied(format!(
                "site '{site}' is not a member of this network; ask the coordinator's operator to add it"
            )));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of opening the link"))??;
        let hello = match first.and_then(|m| m.kind) {
            Some(pb::node_message::Kind::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message on the link must be a Hello")),
        };
        if hello.site != site {
            return Err(Status::permission_denied(format!(
                "the certificate identifies site '{site}', but the Hello claims '{}'",
                hello.site
            )));
        }
        if hello.catalogue.is_none() {
            return Err(Status::invalid_argument("the Hello must carry the site's catalogue"));
        }

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(pb::Welcome {
                coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
        };
        tx.send(Ok(welcome)).await.map_err(|_| Status::unavailable("link closed"))?;
        let registry = self.coordinator.sites_arc();
        let connection = registry.attach(&hello, remote.clone(), cert_not_after, tx);
        let datasets = hello.catalogue.as_ref().map(|c| c.datasets.len()).unwrap_or(0);
        info!(site = %site, remote = %remote, datasets, min_cell_size = hello.min_cell_size, "site connected");

        self.coordinator.spawn_task(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        registry.touch(&site);
                        match message.kind {
                            Some(pb::node_message::Kind::Result(result)) => registry.deliver(&site, connection, result),
                            Some(pb::node_message::Kind::AuditResult(result)) => {
                                registry.deliver_audit(&site, connection, result)
                            }
                            Some(pb::node_message::Kind::Heartbeat(beat)) => registry.set_budgets(&site, beat.budgets),
                            // A later Hello announces new data; it cannot change the site.
                            Some(pb::node_message::Kind::Hello(h)) if h.site == site && h.catalogue.is_some() => {
                                let datasets = h.catalogue.as_ref().map(|c| c.datasets.len()).unwrap_or(0);
                                if registry.update_catalogue(&h, connection) {
                                    info!(site = %site, datasets, "site announced new data");
                                }
                            }
                            Some(pb::node_message::Kind::Hello(_)) | None => {
                                warn!(site = %site, "unexpected message on the link ignored")
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        warn!(site = %site, error = %status, "link stream failed");
                        break;
                    }
                }
            }
            registry.detach(&site, connection);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
