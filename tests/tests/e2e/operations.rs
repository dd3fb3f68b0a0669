//! What operators see and do: metrics, probes, and shutdowns that finish running queries.

use crate::resilience::{fast_node, fast_node_with, slow_node};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use verbund_node::Node;
use verbund_ops::ReadinessCheck;
use verbund_ops::prometheus_client::registry::Registry;
use verbund_proto::v1 as pb;
use verbund_tests::{Network, open_policy, status, wait_until};

const COUNT: &str = "SELECT count(*) AS n FROM vitals";

/// Serves an operations endpoint on a loopback port; returns its base URL.
async fn ops(registry: Arc<Registry>, ready: ReadinessCheck, stop: &CancellationToken) -> String {
    let addr = verbund_ops::spawn("127.0.0.1:0".parse().unwrap(), registry, ready, stop.clone()).await.unwrap();
    format!("http://{addr}")
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of one sample line `name{labels} value` in a metrics text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_report_queries_sites_and_withheld_cells() {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut network = Network::start(&["a", "b"]).await;
    let c = network.coordinator.clone();
    let coordinator = ops(c.metrics_registry(), Arc::new(move || c.readiness()), &stop).await;
    assert_eq!(get(&format!("{coordinator}/readyz")).await.0, 200);
    assert_eq!(get(&format!("{coordinator}/livez")).await, (200, "ok\n".into()));

    // Site b releases nothing under 5 patients; every value group has one.
    let a: Arc<Node> = fast_node(&network, "a", 10).into();
    let (ready_a, registry_a) = (a.clone(), a.metrics_registry());
    let site_a = ops(registry_a, Arc::new(move || ready_a.readiness()), &stop).await;
    let (status_code, body) = get(&format!("{site_a}/readyz")).await;
    assert_eq!(status_code, 503, "a node without its coordinator is not ready");
    assert!(body.contains("not connected"), "{body}");
    let b: Arc<Node> = fast_node_with(&network, "b", 10, open_policy(5)).into();
    let site_b = ops(b.metrics_registry(), Arc::new(|| Ok(())), &stop).await;
    network.add_node(a).await;
    network.add_node(b).await;
    assert_eq!(get(&format!("{site_a}/readyz")).await.0, 200);

    let (_, response) = network.query("SELECT value, count(*) AS n FROM vitals GROUP BY value").await.unwrap();
    assert_eq!(status(&response, "b").groups, 0, "b withholds all 10 groups");
    network.query("SELECT count(*) AS n FROM vitals WHERE nonsense > 1").await.expect_err("unknown column");

    let (code, text) = get(&format!("{coordinator}/metrics")).await;
    assert_eq!(code, 200);
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value("verbund_coordinator_queries_total{outcome=\"answered\"}"), 1.0);
    assert_eq!(value("verbund_coordinator_queries_total{outcome=\"rejected\"}"), 1.0);
    assert_eq!(value("verbund_coordinator_query_duration_seconds_count"), 2.0);
    assert_eq!(value("verbund_coordinator_site_results_total{site=\"b\",status=\"answered\"}"), 1.0);
    assert_eq!(value("verbund_coordinator_withheld_cells_total"), 10.0);
    assert_eq!(value("verbund_coordinator_sites_connected"), 2.0);
    assert_eq!(value("verbund_coordinator_sites_configured"), 2.0);
    assert_eq!(value("verbund_coordinator_queries_running"), 0.0);
    assert_eq!(value("verbund_coordinator_queries_queued"), 0.0);
    // The sweep (every 60 s, and once at start) counts what the store holds.
    assert!(sample(&text, "verbund_coordinator_stored_queries").is_some(), "{text}");
    assert_eq!(value("verbund_coordinator_stored_queries_expired_total"), 0.0);

    let (_, text) = get(&format!("{site_b}/metrics")).await;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value("verbund_node_queries_total{outcome=\"answered\"}"), 1.0);
    assert_eq!(value("verbund_node_withheld_groups_total"), 10.0);
    assert_eq!(value("verbund_node_coordinator_connected"), 1.0);
    // Labels never carry query content: no group key, column or value appears.
    assert!(!text.contains("vitals") && !text.contains("value="), "{text}");

    network.kill("a");
    let c = network.coordinator.clone();
    wait_until("the coordinator counts a gone", Duration::from_secs(5), || !c.sites().is_connected("a")).await;
    let (_, text) = get(&format!("{coordinator}/metrics")).await;
    assert_eq!(sample(&text, "verbund_coordinator_sites_connected"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_shutting_down_finishes_running_queries_and_refuses_new_ones() {
    let mut network = Network::start(&["a", "b"]).await;
    network.add_node(fast_node(&network, "a", 10)).await;
    let (slow, progress) = slow_node(&network, "b", 40, Duration::from_millis(20));
    network.add_node(slow).await;

    let running = network.spawn_query(pb::ResearchQuery { sql: COUNT.into(), ..Default::default() }).await;
    wait_until("the slow site is scanning", Duration::from_secs(5), || progress.running() > 0).await;
    network.coordinator_process().shutdown();
    let c = network.coordinator.clone();
    wait_until("the coordinator reports draining", Duration::from_secs(2), || c.readiness().is_err()).await;

    let refused = network.query(COUNT).await.expect_err("no new queries while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("shutting down"), "{}", refused.message());

    let response = running.await.unwrap().expect("the running query is answered").into_inner();
    assert!(response.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered), "{:?}", response.sites);
    let process = network.coordinator_process();
    wait_until("the coordinator stopped", Duration::from_secs(5), || process.finished()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_finishes_its_query_and_refuses_new_ones() {
    let mut network = Network::start(&["b"]).await;
    let (slow, progress) = slow_node(&network, "b", 40, Duration::from_millis(20));
    let slow: Arc<Node> = slow.into();
    network.add_node(slow.clone()).await;

    let running = network.spawn_query(pb::ResearchQuery { sql: COUNT.into(), ..Default::default() }).await;
    wait_until("the site is scanning", Duration::from_secs(5), || progress.running() > 0).await;
    network.nodes["b"].shutdown();
    wait_until("the node reports draining", Duration::from_secs(2), || slow.readiness().is_err()).await;

    let (_, response) = network.query(COUNT).await.unwrap();
    let b = status(&response, "b");
    assert_eq!(b.outcome(), pb::SiteOutcome::Refused, "{b:?}");
    assert!(b.message.contains("shutting down"), "{}", b.message);

    let response = running.await.unwrap().expect("the running query is answered").into_inner();
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::Answered);
    let process = &network.nodes["b"];
    wait_until("the node stopped", Duration::from_secs(5), || process.finished()).await;
    let c = network.coordinator.clone();
    wait_until("the coordinator saw the node go", Duration::from_secs(5), || !c.sites().is_connected("b")).await;
}
