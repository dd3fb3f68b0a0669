//! The operations endpoint of a verbund service: `GET /metrics` (Prometheus/OpenMetrics
//! text), `GET /livez` and `GET /readyz`, over plain HTTP on an address of its own.
//!
//! It carries no health data: only counts of queries, latencies and connection states. It
//! is meant for the cluster's monitoring network, not for researchers, and binds only where
//! the operator says (`ops_listen`).

pub mod metrics;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::{AuditMetrics, CommitObserver, CoordinatorMetrics, NodeMetrics, RunningGuard};
pub use prometheus_client;

/// Whether the service should receive work now; `Err` says why not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: ReadinessCheck,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &ops.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response(),
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match (ops.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// Serves the endpoint on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(Ops { registry, ready });
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds `address` and serves the endpoint in the background; errors name the address.
pub async fn spawn(
    address: std::net::SocketAddr,
    registry: Arc<Registry>,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for metrics and probes on {address}: {e}"))
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, registry, ready, shutdown).await {
            tracing::error!(error = %e, "the operations endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "metrics on /metrics, probes on /livez and /readyz");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn serves_metrics_and_probes() {
        let mut registry = Registry::default();
        let node = NodeMetrics::new(&mut registry);
        node.query_finished("answered", std::time::Duration::from_millis(3), 2, 1);
        let ready_flag = Arc::new(AtomicBool::new(false));
        let flag = ready_flag.clone();
        let ready: ReadinessCheck =
            Arc::new(move || if flag.load(Ordering::SeqCst) { Ok(()) } else { Err("no coordinator".into()) });
        let shutdown = CancellationToken::new();
        let addr = spawn("127.0.0.1:0".parse().unwrap(), Arc::new(registry), ready, shutdown.clone()).await.unwrap();
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move {
                let r = reqwest::get(url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("verbund_node_queries_total{outcome=\"answered\"} 1"), "{body}");
        assert!(body.contains("verbund_node_withheld_groups_total 2"), "{body}");
        assert!(body.contains("verbund_node_query_duration_seconds_count 1"), "{body}");
        assert_eq!(get("/livez").await.0, 200);
        let (status, body) = get("/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: no coordinator\n"));
        ready_flag.store(true, Ordering::SeqCst);
        assert_eq!(get("/readyz").await.0, 200);
        assert_eq!(get("/nothing").await.0, 404);
        shutdown.cancel();
    }
}
