//! Sites that die, come back, run slow, or are cancelled. (Sites behind a proxy: `proxy.rs`.)

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use verbund_node::{Catalogue, Node};
use verbund_proto::v1 as pb;
use verbund_tests::compare::ints;
use verbund_tests::slow::{Progress, slow_table, vitals_schema};
use verbund_tests::{Network, PROJECT, memory_catalogue, open_policy, status, wait_until, with_token};

pub(crate) fn fast_node(network: &Network, site: &str, rows: i64) -> Node {
    fast_node_with(network, site, rows, open_policy(1))
}

/// A site with `rows` patients, one row each, under `policy`.
pub(crate) fn fast_node_with(network: &Network, site: &str, rows: i64, policy: verbund_policies::Policy) -> Node {
    network.node(site, vitals(site, rows), policy)
}

/// A `vitals` table of `rows` patients, one row each.
pub(crate) fn vitals(site: &str, rows: i64) -> Catalogue {
    let ids: Vec<String> = (0..rows).map(|i| format!("{site}-{i}")).collect();
    let batch = RecordBatch::try_new(
        vitals_schema(),
        vec![Arc::new(StringArray::from(ids)), Arc::new(Int64Array::from_iter_values(0..rows))],
    )
    .unwrap();
    memory_catalogue("vitals", vec![batch], &["value"])
}

/// A site whose scan takes `batches × delay`.
pub(crate) fn slow_node(network: &Network, site: &str, batches: usize, delay: Duration) -> (Node, Arc<Progress>) {
    slow_node_with(network, site, batches, delay, open_policy(1))
}

fn slow_node_with(
    network: &Network,
    site: &str,
    batches: usize,
    delay: Duration,
    policy: verbund_policies::Policy,
) -> (Node, Arc<Progress>) {
    let (table, progress) = slow_table(batches, delay);
    let mut catalogue = Catalogue::new();
    catalogue.add_table("vitals", table, "patient_id", &["value".into()]).unwrap();
    (network.node(site, catalogue, policy), progress)
}

const COUNT: &str = "SELECT count(*) AS n FROM vitals";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_query_costs_at_most_the_deadline_and_is_used_again_when_back() {
    let mut network = Network::start(&["a", "b", "c"]).await;
    network.add_node(fast_node(&network, "a", 100)).await;
    network.add_node(fast_node(&network, "c", 50)).await;
    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(20));
    network.add_node(slow).await;

    let request =
        pb::ResearchQuery { sql: COUNT.into(), timeout_ms: 5_000, project: PROJECT.into(), ..Default::default() };
    let started = Instant::now();
    let pending = network.spawn_query(request).await;
    wait_until("the slow site is scanning", Duration::from_secs(5), || progress.batches.load(Ordering::SeqCst) > 2)
        .await;
    network.kill("b");
    let response = pending.await.unwrap().unwrap().into_inner();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "the answer took {elapsed:?}, longer than the deadline");
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::Disconnected);
    assert_eq!(status(&response, "a").outcome(), pb::SiteOutcome::Answered);
    let table = verbund_tests::decode(&response.arrow_ipc).unwrap();
    assert_eq!(ints(&table, 0), vec![Some(150)], "a partial answer from the sites that answered");
    assert!(response.notes.iter().any(|n| n.contains("2 of 3 sites")), "{:?}", response.notes);

    // The coordinator knows b is gone, and says so without waiting for a deadline.
    assert!(network.coordinator.sites().wait_for_disconnect("b", Duration::from_secs(5)).await);
    let started = Instant::now();
    let (_, response) = network.query(COUNT).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::NotConnected);
    let listed = network.list_sites().await;
    let b = listed.sites.iter().find(|s| s.site == "b").unwrap();
    assert!(!b.connected);
    assert!(b.last_seen_unix_ms > 0);

    // b comes back (with new data) and is asked again.
    network.add_node(fast_node(&network, "b", 7)).await;
    let (table, response) = network.query(COUNT).await.unwrap();
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::Answered);
    assert_eq!(ints(&table, 0), vec![Some(157)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_stops_running_at_the_node() {
    let mut network = Network::start(&["a", "b"]).await;
    network.add_node(fast_node(&network, "a", 10)).await;
    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(10));
    network.add_node(slow).await;

    let started = Instant::now();
    let request = pb::ResearchQuery { sql: COUNT.into(), timeout_ms: 700, ..Default::default() };
    let (table, response) = network.query_with(request).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "answer after {elapsed:?}");
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::TimedOut);
    assert_eq!(ints(&table, 0), vec![Some(10)]);

    // The scan at the node was dropped, and produces nothing more.
    wait_until("the node stopped the scan", Duration::from_secs(2), || progress.running() == 0).await;
    let produced = progress.batches.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(progress.batches.load(Ordering::SeqCst), produced, "the scan kept running");
    assert!(produced < 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_query_stops_at_the_node_and_says_cancelled() {
    let mut network = Network::start(&["b"]).await;
    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(10));
    network.add_node(slow).await;
    let request = pb::ResearchQuery {
        sql: COUNT.into(),
        query_id: "q-cancel-1".into(),
        timeout_ms: 20_000,
        project: PROJECT.into(),
        ..Default::default()
    };
    let started = Instant::now();
    let pending = network.spawn_query(request).await;
    wait_until("the scan runs", Duration::from_secs(5), || progress.batches.load(Ordering::SeqCst) > 2).await;
    let token = network.pki.token();
    let found = network
        .client()
        .await
        .cancel(with_token(pb::CancelRequest { query_id: "q-cancel-1".into() }, &token))
        .await
        .unwrap()
        .into_inner()
        .found;
    assert!(found);
    let response = pending.await.unwrap().unwrap().into_inner();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status(&response, "b").outcome(), pb::SiteOutcome::Cancelled);
    wait_until("the node stopped the scan", Duration::from_secs(2), || progress.running() == 0).await;
    let unknown =
        network.client().await.cancel(with_token(pb::CancelRequest { query_id: "nope".into() }, &token)).await.unwrap();
    assert!(!unknown.into_inner().found);
}

/// A researcher who goes away (Ctrl-C in the CLI drops the call) stops the work at the sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_researcher_who_hangs_up_stops_the_work_at_the_node() {
    let mut network = Network::start(&["b"]).await;
    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(10));
    network.add_node(slow).await;
    let request =
        pb::ResearchQuery { sql: COUNT.into(), timeout_ms: 20_000, project: PROJECT.into(), ..Default::default() };
    let pending = network.spawn_query(request).await;
    wait_until("the scan runs", Duration::from_secs(5), || progress.batches.load(Ordering::SeqCst) > 2).await;
    pending.abort();
    wait_until("the node stopped the scan", Duration::from_secs(3), || progress.running() == 0).await;
}

/// When the coordinator goes away and comes back, nodes redial by themselves (with backoff)
/// and answer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_redial_a_restarted_coordinator() {
    let mut network = Network::start(&["a", "c"]).await;
    let node = fast_node(&network, "a", 4);
    network.add_node(node).await;
    let node = fast_node(&network, "c", 6);
    network.add_node(node).await;
    network.restart_coordinator().await;
    assert!(
        network.coordinator.sites().wait_for(&["a", "c"], Duration::from_secs(10)).await,
        "the nodes did not come back to the new coordinator"
    );
    let (table, response) = network.query(COUNT).await.unwrap();
    assert!(response.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered));
    assert_eq!(ints(&table, 0), vec![Some(10)]);
    let listed = network.list_sites().await;
    let a = listed.sites.iter().find(|s| s.site == "a").unwrap();
    assert!(a.connected && a.last_seen_unix_ms > 0);
    assert_eq!(a.catalogue.as_ref().unwrap().datasets[0].name, "vitals", "the catalogue is announced again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_site_queues_queries_and_refuses_only_past_its_queue() {
    let mut network = Network::start(&["b"]).await;
    let mut policy = open_policy(1);
    policy.max_concurrent_queries = 1;
    policy.max_queued_queries = 1;
    let (slow, progress) = slow_node_with(&network, "b", 20, Duration::from_millis(15), policy);
    network.add_node(slow).await;

    let first = network.spawn_query(pb::ResearchQuery { sql: COUNT.into(), ..Default::default() }).await;
    wait_until("the first query runs", Duration::from_secs(5), || progress.running() > 0).await;
    let second = network.spawn_query(pb::ResearchQuery { sql: COUNT.into(), ..Default::default() }).await;
    let third = network.spawn_query(pb::ResearchQuery { sql: COUNT.into(), ..Default::default() }).await;
    let mut statuses = Vec::new();
    for pending in [first, second, third] {
        let response = pending.await.unwrap().unwrap().into_inner();
        statuses.push(status(&response, "b").clone());
    }
    assert_eq!(statuses[0].outcome(), pb::SiteOutcome::Answered, "{:?}", statuses[0]);
    let answered = statuses.iter().filter(|s| s.outcome() == pb::SiteOutcome::Answered).count();
    let refused: Vec<_> = statuses.iter().filter(|s| s.outcome() == pb::SiteOutcome::Refused).collect();
    assert_eq!((answered, refused.len()), (2, 1), "one waits and is answered, one is refused: {statuses:?}");
    assert!(refused[0].message.contains("waiting"), "{}", refused[0].message);
}
