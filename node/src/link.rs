//! The node's side of the link: dial out to the coordinator (directly or through a proxy, as
//! the node's [`Egress`] decides), announce the site and its catalogue, answer queries as
//! they arrive, and redial with exponential backoff and jitter whenever the stream breaks.

use crate::Node;
use crate::refusal::{Exhausted, Refusal, outcome_label};
use http::Uri;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rand::RngExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Endpoint;
use tracing::{Instrument, debug, info, warn};
use verbund_proto::v1 as pb;
use verbund_proto::v1::node_link_client::NodeLinkClient;
use verbund_security::egress::{Egress, EgressError};
use verbund_security::tls::{TlsFiles, node_client_tls};

/// The longest a node works on one query, whatever the coordinator asks for.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(300);
pub use verbund_proto::MAX_MESSAGE_BYTES;
/// Room for the envelope around a partial answer (query id, elapsed time, framing).
const ENVELOPE_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `https://host:port` of the coordinator's node link.
    pub coordinator: String,
    /// The site's TLS files, read again at every connection.
    pub tls: TlsFiles,
    /// The name the coordinator's certificate must carry.
    pub coordinator_name: String,
    /// How the link leaves the site: directly or through a proxy (shared with the fetch of
    /// the identity provider's keys). Direct by default.
    pub egress: Arc<Egress>,
    pub heartbeat: Duration,
    /// How often to look for renewed TLS files; a change reconnects with them.
    pub tls_reload: Duration,
    /// How often to look for new data files (a new import); new data is served and announced.
    pub data_reload: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// On shutdown, how long running queries may take before they are stopped.
    pub drain: Duration,
    /// The largest message sent on the link. A larger answer is refused (that query only):
    /// sending it would break the stream, and with it every other query at this site.
    pub max_message_bytes: usize,
}

impl LinkOptions {
    pub fn new(coordinator: impl Into<String>, tls: TlsFiles, coordinator_name: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            tls,
            coordinator_name: coordinator_name.into(),
            egress: Arc::new(Egress::direct()),
            heartbeat: Duration::from_secs(15),
            tls_reload: Duration::from_secs(30),
            data_reload: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("invalid coordinator address: {0}")]
    Address(#[source] tonic::transport::Error),
    #[error(transparent)]
    Egress(EgressError),
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[source] tonic::transport::Error),
    #[error("the coordinator refused the link: {0}")]
    Refused(tonic::Status),
    #[error("the link broke: {0}")]
    Broken(tonic::Status),
    #[error("the link's send queue is closed")]
    SendClosed,
    #[error("TLS: {0}")]
    Tls(#[from] verbund_security::Error),
    #[error("the TLS files changed; reconnecting with them")]
    Renewed,
}

/// An error with its causes: tonic's own message ("transport error") says little alone.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Keeps the link up until `shutdown` is cancelled.
pub async fn run_link(node: Arc<Node>, options: LinkOptions, shutdown: CancellationToken) {
    let mut backoff = options.backoff_min;
    loop {
        let mut connected = false;
        let result = session(&node, &options, &shutdown, &mut connected).await;
        node.metrics().set_connected(false);
        if shutdown.is_cancelled() {
            info!(site = %node.site(), "link stopped");
            return;
        }
        match result {
            Ok(()) => {
                info!(site = %node.site(), "coordinator closed the link; redialling");
                node.set_link_error(Some("the coordinator closed the link; redialling".into()));
            }
            Err(e) => {
                warn!(site = %node.site(), error = %e, "link down; redialling");
                node.set_link_error(Some(e.to_string()));
            }
        }
        if connected {
            backoff = options.backoff_min;
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        let wait = backoff + Duration::from_millis(jitter);
        debug!(wait_ms = wait.as_millis() as u64, "waiting before redial");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(options.backoff_max);
    }
}

async fn session(
    node: &Arc<Node>,
    options: &LinkOptions,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), LinkError> {
    let stamp = options.tls.stamp();
    let (tls, cert) = node_client_tls(&options.tls, &options.coordinator_name)?;
    cert.report("site", &options.tls.cert);
    let endpoint = Endpoint::from_shared(options.coordinator.clone())
        .map_err(LinkError::Address)?
        .tls_config(tls)
        .map_err(LinkError::Connect)?
        .connect_timeout(options.egress.connect_timeout())
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    // The first connection is opened here, so that a proxy's refusal (407, 403, a stall)
    // comes back as the node's own error, not as tonic's "transport error". Later
    // reconnects of the channel go out the same way.
    let target = endpoint.uri().clone();
    let first = Arc::new(Mutex::new(Some(options.egress.connect(&target).await.map_err(LinkError::Egress)?)));
    let egress = options.egress.clone();
    let connector = tower::service_fn(move |target: Uri| {
        let (first, egress) = (first.clone(), egress.clone());
        async move {
            let ready = first.lock().take();
            let stream = match ready {
                Some(stream) => stream,
                None => egress.connect(&target).await?,
            };
            Ok::<_, EgressError>(TokioIo::new(stream))
        }
    });
    let channel = endpoint.connect_with_connector(connector).await.map_err(LinkError::Connect)?;
    let mut client = NodeLinkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(options.max_message_bytes);

    let (tx, rx) = mpsc::channel::<pb::NodeMessage>(256);
    let mut hello = node.hello();
    hello.budgets = node.budgets().await;
    tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) })
        .await
        .map_err(|_| LinkError::SendClosed)?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await.map_err(LinkError::Refused)?.into_inner();

    // Every query of this connection stops when the connection ends. It is not a child of
    // `shutdown`: on shutdown, running queries get `options.drain` to finish.
    let connection = CancellationToken::new();
    let _stop_queries = connection.clone().drop_guard();
    let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    // The queries of this connection; shutdown waits for them (up to the drain time).
    let queries = TaskTracker::new();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tls_check = tokio::time::interval(options.tls_reload);
    tls_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut data_check = tokio::time::interval(options.data_reload);
    data_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // New data is announced as a Hello on the same link: the coordinator replaces the site's
    // catalogue and keeps the connection.
    let announce = |node: Arc<Node>| async move {
        let mut hello = node.hello();
        hello.budgets = node.budgets().await;
        pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }
    };

    loop {
        let drain_over = async {
            match drain_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                node.set_draining();
                queries.close();
                if queries.is_empty() {
                    break;
                }
                info!(site = %node.site(), running = queries.len(), drain_seconds = options.drain.as_secs(), "shutting down: finishing running queries, refusing new ones");
                drain_deadline = Some(tokio::time::Instant::now() + options.drain);
            }
            _ = queries.wait(), if drain_deadline.is_some() => {
                info!(site = %node.site(), "running queries finished");
                break;
            }
            _ = drain_over => {
                let ids: Vec<String> = running.lock().keys().cloned().collect();
                warn!(site = %node.site(), running = ids.len(), query_ids = ?ids, "drain time over; stopping the remaining queries");
                // Stopped queries still tell the coordinator so, if they can in a moment.
                connection.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(1), queries.wait()).await;
                break;
            }
            _ = node.tls_check_requested() => {
                if node.reload_data().await {
                    tx.send(announce(node.clone()).await).await.map_err(|_| LinkError::SendClosed)?;
                }
                if options.tls.stamp() != stamp {
                    info!(site = %node.site(), "reload requested: certificate files changed; reconnecting with them");
                    return Err(LinkError::Renewed);
                }
                info!(site = %node.site(), "reload requested: certificate files unchanged");
            }
            _ = tls_check.tick() => {
                if options.tls.stamp() != stamp {
                    info!(site = %node.site(), "site certificate files changed; reconnecting with them");
                    return Err(LinkError::Renewed);
                }
            }
            _ = data_check.tick() => {
                if node.reload_data().await {
                    tx.send(announce(node.clone()).await).await.map_err(|_| LinkError::SendClosed)?;
                }
            }
            _ = heartbeat.tick() => {
                let beat = pb::Heartbeat { unix_ms: verbund_proto::unix_ms(), budgets: node.budgets().await };
                let beat = pb::NodeMessage { kind: Some(pb::node_message::Kind::Heartbeat(beat)) };
                tx.send(beat).await.map_err(|_| LinkError::SendClosed)?;
            }
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(LinkError::Broken(status)),
                };
                match message.kind {
                    Some(pb::coordinator_message::Kind::Welcome(w)) => {
                        *connected = true;
                        node.metrics().set_connected(true);
                        node.set_link_error(None);
                        info!(site = %node.site(), coordinator_version = %w.coordinator_version, "connected to coordinator");
                    }
                    Some(pb::coordinator_message::Kind::Query(q)) if node.is_draining() => {
                        info!(query_id = %q.query_id, "refused: shutting down");
                        let shutting_down = Refusal::ShuttingDown { site: node.site().to_string() };
                        let requester = crate::audit::requester(&q, None);
                        let refusal = match node.conclude(&q, requester, Err(shutting_down.clone()), Duration::ZERO).await {
                            Err(refusal) => refusal,
                            Ok(_) => shutting_down,
                        }
                        .to_proto();
                        let result = pb::QueryResult { query_id: q.query_id, outcome: Some(pb::query_result::Outcome::Refusal(refusal)), elapsed_ms: 0.0 };
                        tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Result(result)) }).await.map_err(|_| LinkError::SendClosed)?;
                    }
                    Some(pb::coordinator_message::Kind::Query(q)) => {
                        let token = connection.child_token();
                        running.lock().insert(q.query_id.clone(), token.clone());
                        let limit = options.max_message_bytes;
                        let span = tracing::info_span!("query", query_id = %q.query_id);
                        queries.spawn(answer(node.clone(), q, token, tx.clone(), running.clone(), limit).instrument(span));
                    }
                    Some(pb::coordinator_message::Kind::Cancel(c)) => {
                        if let Some(token) = running.lock().get(&c.query_id) {
                            info!(query_id = %c.query_id, reason = %c.reason, "cancelling query");
                            token.cancel();
                        }
                    }
                    Some(pb::coordinator_message::Kind::AuditRead(read)) => {
                        let (node, tx) = (node.clone(), tx.clone());
                        let span = tracing::info_span!("audit_read", request_id = %read.request_id);
                        queries.spawn(async move {
                            let result = node.read_audit(&read).await;
                            let _ = tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::AuditResult(result)) }).await;
                        }.instrument(span));
                    }
                    Some(pb::coordinator_message::Kind::Heartbeat(_)) | None => {}
                }
            }
        }
    }
    // Close this side after the answers already queued, and give the coordinator a moment to
    // read them and close its side: returning at once could drop answers still in the queue.
    drop(tx);
    let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
    Ok(())
}

/// Runs one query until it finishes, times out or is cancelled; dropping the engine's
/// future stops the DataFusion plan.
async fn answer(
    node: Arc<Node>,
    q: pb::NodeQuery,
    token: CancellationToken,
    tx: mpsc::Sender<pb::NodeMessage>,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    max_message_bytes: usize,
) {
    let started = Instant::now();
    let _running_metric = node.metrics().query_started();
    let timeout = match q.timeout_ms {
        0 => MAX_QUERY_TIME,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_QUERY_TIME),
    };
    // Admission and conclusion are recorded outside the race with cancel and deadline, so
    // that every request that came in has its outcome on record before anything leaves.
    let outcome = match node.admit(&q).await {
        Err((requester, refusal)) => node.conclude(&q, requester, Err(refusal), started.elapsed()).await,
        Ok(admitted) => {
            let outcome = tokio::select! {
                outcome = node.execute(&q, &admitted) => outcome.and_then(|answer| fit(answer, max_message_bytes)),
                _ = token.cancelled() => {
                    info!("cancelled; execution stopped");
                    Err(Refusal::Cancelled)
                }
                _ = tokio::time::sleep(timeout) => {
                    info!(timeout_ms = timeout.as_millis() as u64, "deadline passed; execution stopped");
                    Err(Refusal::TimedOut)
                }
            };
            node.conclude(&q, admitted.requester, outcome, started.elapsed()).await
        }
    };
    running.lock().remove(&q.query_id);
    let (withheld_groups, withheld_bins) = match &outcome {
        Ok(p) => (p.withheld_groups, p.withheld_bins),
        Err(_) => (0, 0),
    };
    if let Ok(pb::PartialResult { cost: Some(cost), .. }) = &outcome {
        let project = q.identity.as_ref().map(|i| i.project.as_str()).unwrap_or_default();
        node.metrics().privacy_spent(project, cost.epsilon);
    }
    node.metrics().query_finished(outcome_label(&outcome), started.elapsed(), withheld_groups, withheld_bins);
    let outcome = match outcome {
        Ok(answer) => pb::query_result::Outcome::Answer(answer),
        Err(refusal) => pb::query_result::Outcome::Refusal(refusal.to_proto()),
    };
    let result = pb::QueryResult {
        query_id: q.query_id.clone(),
        outcome: Some(outcome),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    // The coordinator may be gone; then there is no one to tell.
    let _ = tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Result(result)) }).await;
}

/// The answer if it fits in one link message, else a refusal of this query alone.
fn fit(answer: pb::PartialResult, max_message_bytes: usize) -> Result<pb::PartialResult, Refusal> {
    let bytes = prost::Message::encoded_len(&answer);
    if bytes + ENVELOPE_BYTES <= max_message_bytes {
        return Ok(answer);
    }
    warn!(bytes, limit = max_message_bytes, "answer too large for the link; refused");
    Err(Exhausted::AnswerSize { bytes, limit: max_message_bytes }.into())
}
