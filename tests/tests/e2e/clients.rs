//! Queries that outlive a connection: submit, poll, fetch later (also after a restart), by
//! their researcher only; expiry; cancel of a submitted or queued query.

use crate::resilience::{fast_node, slow_node};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::Code;
use verbund_proto::v1 as pb;
use verbund_tests::compare::ints;
use verbund_tests::{Network, PROJECT, decode, wait_until, with_token};

const COUNT: &str = "SELECT count(*) AS n FROM vitals";

fn query(id: &str, sql: &str) -> pb::SubmitRequest {
    let query = pb::ResearchQuery {
        query_id: id.into(),
        sql: sql.into(),
        project: PROJECT.into(),
        timeout_ms: 20_000,
        ..Default::default()
    };
    pb::SubmitRequest { request: Some(pb::submit_request::Request::Query(query)) }
}

fn bob(network: &Network) -> String {
    network.pki.issuer.issue("bob", &[PROJECT], &["researcher"], Duration::from_secs(3600))
}

async fn submit(network: &Network, request: pb::SubmitRequest) -> Result<pb::QueryStatus, tonic::Status> {
    let token = network.pki.token();
    network.client().await.submit(with_token(request, &token)).await.map(|r| r.into_inner())
}

/// Polls (long-poll, as a client would) until the query is finished.
async fn finished(network: &Network, token: &str, id: &str) -> pb::QueryStatus {
    let mut client = network.client().await;
    let mut version = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request =
            pb::StatusRequest { query_id: id.into(), after_version: version, wait_ms: 2_000, ..Default::default() };
        let status = client.get_status(with_token(request, token)).await.unwrap().into_inner();
        if matches!(status.state(), pb::QueryState::Done | pb::QueryState::Failed | pb::QueryState::Cancelled) {
            return status;
        }
        assert!(Instant::now() < deadline, "query {id} did not finish: {status:?}");
        version = status.version;
    }
}

async fn result(network: &Network, token: &str, owner: &str, id: &str) -> Result<pb::ResultResponse, tonic::Status> {
    let request = pb::ResultRequest { query_id: id.into(), owner: owner.into() };
    network.client().await.get_result(with_token(request, token)).await.map(|r| r.into_inner())
}

fn answer(response: &pb::ResultResponse) -> &pb::QueryResponse {
    match &response.result {
        Some(pb::result_response::Result::Query(q)) => q,
        other => panic!("not a query's answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_query_is_fetched_later_on_a_new_connection() {
    let mut network = Network::start(&["a", "c"]).await;
    network.add_node(fast_node(&network, "a", 4)).await;
    network.add_node(fast_node(&network, "c", 6)).await;
    let token = network.pki.token();

    let submitted = {
        // This connection is gone once the block ends.
        let mut client = network.client().await;
        client.submit(with_token(query("q-later", COUNT), &token)).await.unwrap().into_inner()
    };
    assert_eq!(submitted.query_id, "q-later");
    assert_eq!((submitted.owner.as_str(), submitted.kind.as_str()), ("alice", "query"));
    assert!(matches!(submitted.state(), pb::QueryState::Queued | pb::QueryState::Running));
    assert_eq!(submitted.summary, COUNT);

    let status = finished(&network, &token, "q-later").await;
    assert_eq!(status.state(), pb::QueryState::Done, "{status:?}");
    assert_eq!(status.rows, 1);
    assert!(status.expires_unix_ms > status.finished_unix_ms);
    let sites: Vec<(&str, bool)> = status.sites.iter().map(|s| (s.site.as_str(), s.finished)).collect();
    assert_eq!(sites, vec![("a", true), ("c", true)]);

    let fetched = result(&network, &token, "", "q-later").await.unwrap();
    let (blocking, _) = network.query(COUNT).await.unwrap();
    let stored = decode(&answer(&fetched).arrow_ipc).unwrap();
    assert_eq!(ints(&stored, 0), vec![Some(10)]);
    assert_eq!(stored, blocking, "the stored answer is the blocking call's");

    // The blocking call is stored too; both are listed, newest first.
    let listed =
        network.client().await.list_queries(with_token(pb::ListRequest::default(), &token)).await.unwrap().into_inner();
    assert_eq!(listed.queries.len(), 2, "{listed:?}");
    assert_eq!(listed.queries[1].query_id, "q-later");

    // An id in use is refused, and so is a query that cannot be planned (not stored).
    let again = submit(&network, query("q-later", COUNT)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains("q-later") && again.message().contains("done"), "{}", again.message());
    let bad = submit(&network, query("q-bad", "SELECT nonsense FROM vitals")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(result(&network, &token, "", "q-bad").await.unwrap_err().code(), Code::NotFound);
    let empty = pb::SubmitRequest { request: None };
    assert_eq!(submit(&network, empty).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_a_restart_and_a_query_caught_running_fails() {
    let mut network = Network::start(&["a", "b"]).await;
    network.add_node(fast_node(&network, "a", 4)).await;
    let token = network.pki.token();
    let mut done = query("q-done", COUNT);
    if let Some(pb::submit_request::Request::Query(q)) = &mut done.request {
        q.sites = vec!["a".into()];
    }
    submit(&network, done).await.unwrap();
    assert_eq!(finished(&network, &token, "q-done").await.state(), pb::QueryState::Done);

    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(10));
    network.add_node(slow).await;
    let mut running = query("q-running", COUNT);
    if let Some(pb::submit_request::Request::Query(q)) = &mut running.request {
        q.sites = vec!["b".into()];
    }
    submit(&network, running).await.unwrap();
    wait_until("the scan runs", Duration::from_secs(5), || progress.batches.load(Ordering::SeqCst) > 2).await;

    network.restart_coordinator().await;

    let kept = result(&network, &token, "", "q-done").await.unwrap();
    assert_eq!(ints(&decode(&answer(&kept).arrow_ipc).unwrap(), 0), vec![Some(4)]);
    let status = kept.status.unwrap();
    assert_eq!(status.state(), pb::QueryState::Done);

    let failed = result(&network, &token, "", "q-running").await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    assert!(failed.message().contains("restarted while this query ran"), "{}", failed.message());
    let request = pb::StatusRequest { query_id: "q-running".into(), ..Default::default() };
    let status = network.client().await.get_status(with_token(request, &token)).await.unwrap().into_inner();
    assert_eq!(status.state(), pb::QueryState::Failed);
    assert!(status.sites.iter().all(|s| s.finished));

    // The new coordinator closed the interrupted query's trail in its audit log.
    let dir = network.coordinator.audit().unwrap().log().dir().to_path_buf();
    let records: Vec<_> = verbund_audit::entries(&dir, Default::default()).unwrap().map(Result::unwrap).collect();
    let closed = records.iter().map(|e| &e.record).find(|r| r.client_query_id.as_deref() == Some("q-running"));
    let closed = closed.expect("a record of the interrupted query");
    assert_eq!(closed.decision, verbund_audit::Decision::Failed);
    assert!(closed.request.to_string().contains("vitals"), "{:?}", closed.request);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_researcher_finds_nothing_unless_the_project_shares() {
    let mut network = Network::start(&["a"]).await;
    network.add_node(fast_node(&network, "a", 4)).await;
    let (alice, bob) = (network.pki.token(), bob(&network));
    submit(&network, query("q-alice", COUNT)).await.unwrap();
    finished(&network, &alice, "q-alice").await;

    let error = result(&network, &bob, "alice", "q-alice").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "not PermissionDenied: nothing confirms the id exists");
    assert_eq!(
        error.message(),
        result(&network, &bob, "alice", "no-such-id").await.unwrap_err().message().replace("no-such-id", "q-alice")
    );
    let request = pb::StatusRequest { query_id: "q-alice".into(), owner: "alice".into(), ..Default::default() };
    assert_eq!(network.client().await.get_status(with_token(request, &bob)).await.unwrap_err().code(), Code::NotFound);
    let mut client = network.client().await;
    let listed = client.list_queries(with_token(pb::ListRequest { project_members: true, ..Default::default() }, &bob));
    assert!(listed.await.unwrap().into_inner().queries.is_empty());
    // Bob's own "q-alice" is another query.
    assert_eq!(result(&network, &bob, "", "q-alice").await.unwrap_err().code(), Code::NotFound);

    // Where the network shares a project's queries, Bob reads Alice's but cannot cancel them.
    let mut shared = Network::start_configured(&["a"], |c| c.queries.share_with_project = true).await;
    shared.add_node(fast_node(&shared, "a", 4)).await;
    let (alice, bob) = (shared.pki.token(), crate::clients::bob(&shared));
    submit(&shared, query("q-shared", COUNT)).await.unwrap();
    finished(&shared, &alice, "q-shared").await;
    let read = result(&shared, &bob, "alice", "q-shared").await.unwrap();
    assert_eq!(ints(&decode(&answer(&read).arrow_ipc).unwrap(), 0), vec![Some(4)]);
    let mut client = shared.client().await;
    let listed = client.list_queries(with_token(pb::ListRequest { project_members: true, ..Default::default() }, &bob));
    assert_eq!(listed.await.unwrap().into_inner().queries.len(), 1);
    let cancel = pb::CancelRequest { query_id: "q-shared".into() };
    assert!(!shared.client().await.cancel(with_token(cancel, &bob)).await.unwrap().into_inner().found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_deleted() {
    let mut network = Network::start_configured(&["a"], |c| {
        c.queries.keep = Duration::from_millis(400);
        c.queries.sweep = Duration::from_millis(100);
    })
    .await;
    network.add_node(fast_node(&network, "a", 4)).await;
    let token = network.pki.token();
    submit(&network, query("q-brief", COUNT)).await.unwrap();
    finished(&network, &token, "q-brief").await;
    assert!(result(&network, &token, "", "q-brief").await.is_ok());
    let store = &network.coordinator;
    wait_until("the sweep deleted the answer", Duration::from_secs(5), || store.store().is_empty().unwrap()).await;
    let gone = result(&network, &token, "", "q-brief").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("kept"), "{}", gone.message());
    let listed = network.client().await.list_queries(with_token(pb::ListRequest::default(), &token)).await.unwrap();
    assert!(listed.into_inner().queries.is_empty());
    // The id is free again.
    submit(&network, query("q-brief", COUNT)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_submitted_query_stops_it_at_the_site_and_a_queued_one_never_starts() {
    let mut network = Network::start_configured(&["b"], |c| c.queries.max_running = 1).await;
    let (slow, progress) = slow_node(&network, "b", 10_000, Duration::from_millis(10));
    network.add_node(slow).await;
    let token = network.pki.token();
    let first = submit(&network, query("q-slow", COUNT)).await.unwrap();
    wait_until("the scan runs", Duration::from_secs(5), || progress.batches.load(Ordering::SeqCst) > 2).await;
    // One slot: the second waits.
    let second = submit(&network, query("q-queued", COUNT)).await.unwrap();
    assert_eq!(second.state(), pb::QueryState::Queued);

    // Progress shows while it runs: the site has not finished.
    let request = pb::StatusRequest { query_id: "q-slow".into(), ..Default::default() };
    let running = network.client().await.get_status(with_token(request, &token)).await.unwrap().into_inner();
    assert_eq!(running.state(), pb::QueryState::Running);
    assert!(running.version > first.version);
    assert_eq!(running.sites.len(), 1);
    assert!(!running.sites[0].finished);

    let cancel = |id: &str| with_token(pb::CancelRequest { query_id: id.into() }, &token);
    assert!(network.client().await.cancel(cancel("q-queued")).await.unwrap().into_inner().found);
    let queued = finished(&network, &token, "q-queued").await;
    assert_eq!(queued.state(), pb::QueryState::Cancelled);
    assert_eq!(queued.started_unix_ms, 0, "it never started");
    assert_eq!(progress.started.load(Ordering::SeqCst), 1, "the queued query never reached the site");

    assert!(network.client().await.cancel(cancel("q-slow")).await.unwrap().into_inner().found);
    let status = finished(&network, &token, "q-slow").await;
    assert_eq!(status.state(), pb::QueryState::Cancelled);
    wait_until("the node stopped the scan", Duration::from_secs(3), || progress.running() == 0).await;
    // What the site said is kept: it was cancelled.
    let kept = result(&network, &token, "", "q-slow").await.unwrap();
    assert_eq!(answer(&kept).sites[0].outcome(), pb::SiteOutcome::Cancelled);
    assert!(!network.client().await.cancel(cancel("q-slow")).await.unwrap().into_inner().found, "it is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_at_the_next_change_not_before() {
    let mut network = Network::start(&["b"]).await;
    let (slow, _progress) = slow_node(&network, "b", 60, Duration::from_millis(10));
    network.add_node(slow).await;
    let token = network.pki.token();
    let submitted = submit(&network, query("q-poll", COUNT)).await.unwrap();
    let mut client = network.client().await;
    let started = Instant::now();
    let mut version = submitted.version;
    let mut seen = Vec::new();
    loop {
        let request = pb::StatusRequest {
            query_id: "q-poll".into(),
            after_version: version,
            wait_ms: 10_000,
            ..Default::default()
        };
        let status = client.get_status(with_token(request, &token)).await.unwrap().into_inner();
        assert!(status.version > version || status.state() == pb::QueryState::Done, "{status:?}");
        version = status.version;
        seen.push(status.state());
        if status.state() == pb::QueryState::Done {
            break;
        }
    }
    // The scan takes about 0.6 s: the polls waited for it instead of returning at once.
    assert!(seen.len() < 10, "{seen:?}");
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    let still = result(&network, &token, "", "q-poll").await.unwrap();
    assert_eq!(still.status.unwrap().state(), pb::QueryState::Done);
}
