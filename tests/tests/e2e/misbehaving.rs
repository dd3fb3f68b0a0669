//! A site that answers with the wrong shape (a mistyped group key) is discarded and marked
//! failed; the other sites' answers still make up the merged result.

use crate::resilience::fast_node;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use verbund_proto::v1 as pb;
use verbund_proto::v1::node_link_client::NodeLinkClient;
use verbund_tests::compare::ints;
use verbund_tests::{Network, status, tls_channel};

/// A fake node with a valid site certificate: it announces `catalogue` and answers every
/// query with what `answer` makes of it. Runs until the returned task is aborted.
async fn fake_site(
    network: &Network,
    site: &str,
    catalogue: pb::Catalogue,
    answer: fn(&pb::NodeQuery) -> pb::PartialResult,
) -> tokio::task::JoinHandle<()> {
    let (tls, _) = verbund_security::tls::node_client_tls(&network.pki.site(site), "127.0.0.1").unwrap();
    let channel = tls_channel(&network.link, tls).await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::Hello { site: site.into(), catalogue: Some(catalogue), min_cell_size: 5, ..Default::default() };
    tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }).await.unwrap();
    let mut inbound = NodeLinkClient::new(channel).attach(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let task = tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(pb::coordinator_message::Kind::Query(q)) = message.kind {
                let result = pb::QueryResult {
                    query_id: q.query_id.clone(),
                    outcome: Some(pb::query_result::Outcome::Answer(answer(&q))),
                    elapsed_ms: 1.0,
                };
                if tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Result(result)) }).await.is_err() {
                    return;
                }
            }
        }
    });
    assert!(network.coordinator.sites().wait_for(&[site], Duration::from_secs(10)).await, "{site} did not connect");
    task
}

/// A group keyed by a string where the plan expects an integer.
fn mistyped_key(_: &pb::NodeQuery) -> pb::PartialResult {
    let key = pb::Literal { value: Some(pb::literal::Value::String("not-a-number".into())) };
    let count = pb::PartialAggregate { state: Some(pb::partial_aggregate::State::Count(pb::CountState { count: 9 })) };
    pb::PartialResult {
        groups: vec![pb::GroupPartial { keys: vec![key], aggregates: vec![count] }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_a_mistyped_group_key_is_discarded_and_the_query_answered() {
    let mut network = Network::start(&["good", "evil"]).await;
    let good = fast_node(&network, "good", 6);
    let catalogue = good.engine().catalogue().clone();
    network.add_node(good).await;
    let _evil = fake_site(&network, "evil", catalogue, mistyped_key).await;

    let (table, response) = network
        .query("SELECT value, count(*) AS n FROM vitals GROUP BY value")
        .await
        .expect("a misbehaving site must not sink the query");
    let evil = status(&response, "evil");
    assert_eq!(evil.outcome(), pb::SiteOutcome::Failed);
    assert!(
        evil.message.contains("malformed") && evil.message.contains("should be of type integer"),
        "{}",
        evil.message
    );
    assert_eq!(status(&response, "good").outcome(), pb::SiteOutcome::Answered);
    let expected: Vec<Option<i64>> = (0..6).map(Some).collect();
    assert_eq!(ints(&table, 0), expected, "the good site's groups, nothing of the bad answer");
    assert!(response.notes.iter().any(|n| n.contains("1 of 2 sites answered")), "{:?}", response.notes);
}
