//! The audit logs of coordinator and sites: every request on record at both ends, linked by
//! the query id, with matching release hashes; a log that cannot be written stops answers.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use std::sync::Arc;
use verbund_audit::{Decision, Entry, Filter, entries, verify};
use verbund_node::Node;
use verbund_proto::v1 as pb;
use verbund_tests::{Network, PROJECT, memory_catalogue, open_policy, status, with_token};

fn vitals(site: &str, rows: i64) -> verbund_node::Catalogue {
    let ids: Vec<String> = (0..rows).map(|i| format!("{site}-{i}")).collect();
    let wards: Vec<&str> = (0..rows).map(|i| if i % 2 == 0 { "north" } else { "south" }).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("ward", Arc::new(StringArray::from(wards)) as _),
        ("value", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
    ])
    .unwrap();
    memory_catalogue("vitals", vec![batch], &["ward", "value"])
}

fn records(dir: &std::path::Path, query_id: &str) -> Vec<Entry> {
    let filter = Filter { query_id: Some(query_id.to_string()), ..Filter::default() };
    entries(dir, filter).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

fn decisions(entries: &[Entry]) -> Vec<Decision> {
    entries.iter().map(|e| e.record.decision).collect()
}

/// Every file of a log directory, as bytes, for checking what must never be in it.
fn log_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for file in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(file.unwrap().path()).unwrap_or_default());
    }
    all
}

async fn start(sites: &[(&str, i64)]) -> (Network, Vec<Arc<Node>>) {
    let names: Vec<&str> = sites.iter().map(|(s, _)| *s).collect();
    let mut network = Network::start(&names).await;
    let mut nodes = Vec::new();
    for (site, rows) in sites {
        let node: Arc<Node> = network.node(site, vitals(site, *rows), open_policy(5)).into();
        network.add_node(node.clone()).await;
        nodes.push(node);
    }
    (network, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_is_on_record_at_the_coordinator_and_at_each_site_with_matching_hashes() {
    let (network, nodes) = start(&[("north", 40), ("south", 30)]).await;
    let coordinator_log = network.coordinator.audit().unwrap().log().dir().to_path_buf();
    let token = network.pki.token();

    let sql = "SELECT ward, count(*) AS n, sum(value) AS s FROM vitals GROUP BY ward";
    let request = pb::ResearchQuery {
        sql: sql.into(),
        project: PROJECT.into(),
        query_id: "my-first-query".into(),
        ..Default::default()
    };
    let response = network.client().await.query(with_token(request, &token)).await.unwrap().into_inner();
    assert_eq!(status(&response, "north").outcome(), pb::SiteOutcome::Answered);

    // The coordinator: received, then answered, with the researcher's id and SQL beside the
    // typed request, and a hash of exactly the response the researcher got.
    let all: Vec<Entry> = entries(&coordinator_log, Filter::default()).unwrap().map(Result::unwrap).collect();
    let answered = all.iter().find(|e| e.record.decision == Decision::Answered).expect("an answered record");
    let wire_id = answered.record.query_id.clone();
    let at_coordinator = records(&coordinator_log, &wire_id);
    assert_eq!(decisions(&at_coordinator), [Decision::Received, Decision::Answered]);
    let r = &answered.record;
    assert_eq!(r.client_query_id.as_deref(), Some("my-first-query"));
    assert_eq!(r.sql.as_deref(), Some(sql));
    assert_eq!(r.requester.project.as_deref(), Some(PROJECT));
    assert!(!r.requester.subject.is_empty());
    let typed: pb::AggregateQuery = r.request_as().expect("the typed request reads back");
    assert_eq!(typed.dataset, "vitals");
    assert_eq!(typed.aggregates.len(), 2);
    assert_eq!(
        r.release_hash.as_deref(),
        Some(verbund_audit::sha256_hex(&prost::Message::encode_to_vec(&response)).as_str())
    );
    assert_eq!(r.groups_released, Some(2));

    // Each site: received and answered under the same id, and the hash of what it sent is
    // the hash the coordinator recorded for that site.
    for node in &nodes {
        let dir = node.audit().unwrap().log().dir().to_path_buf();
        let at_site = records(&dir, &wire_id);
        assert_eq!(decisions(&at_site), [Decision::Received, Decision::Answered], "{}", node.site());
        let site_record = &at_site[1].record;
        assert_eq!(site_record.service, node.site());
        assert_eq!(site_record.peer.as_deref(), Some("127.0.0.1"), "the coordinator, as its certificate names it");
        let from_coordinator =
            r.sites.iter().find(|s| s.site == node.site()).expect("the site in the coordinator's record");
        assert_eq!(from_coordinator.outcome, "answered");
        assert_eq!(from_coordinator.release_hash, site_record.release_hash, "{}", node.site());
        assert!(site_record.release_hash.is_some());
        // Never the token, never row-level data.
        let bytes = log_bytes(&dir);
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "the token is not in the log");
        assert!(!String::from_utf8_lossy(&bytes).contains(&format!("{}-7", node.site())), "no patient ids");
        assert!(verify(&dir, Some(&node.audit().unwrap().log().public_key())).unwrap().is_ok());
    }
    assert!(!log_bytes(&coordinator_log).windows(token.len()).any(|w| w == token.as_bytes()));
    assert!(verify(&coordinator_log, None).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_on_record_with_their_reason() {
    let (network, nodes) = start(&[("north", 40)]).await;
    let coordinator_log = network.coordinator.audit().unwrap().log().dir().to_path_buf();

    // Refused by the coordinator before any site hears of it.
    let error = network.query("SELECT value FROM vitals").await.expect_err("row-level");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    // Refused for its token, at the coordinator.
    let bad_token =
        pb::ResearchQuery { sql: "SELECT count(*) FROM vitals".into(), project: PROJECT.into(), ..Default::default() };
    let error = network.client().await.query(with_token(bad_token, "not-a-token")).await.expect_err("bad token");
    assert_eq!(error.code(), tonic::Code::Unauthenticated);

    let all: Vec<Entry> = entries(&coordinator_log, Filter::default()).unwrap().map(Result::unwrap).collect();
    let refused: Vec<&Entry> = all.iter().filter(|e| e.record.decision == Decision::Refused).collect();
    assert_eq!(refused.len(), 2, "{all:#?}");
    let row_level = refused.iter().find(|e| e.record.sql.as_deref() == Some("SELECT value FROM vitals")).unwrap();
    let refusal = row_level.record.refusal.as_ref().unwrap();
    assert_eq!(refusal.code, "rejected");
    assert!(refusal.reason.contains("row-level"), "{}", refusal.reason);
    let unauthenticated =
        refused.iter().find(|e| e.record.refusal.as_ref().unwrap().code == "unauthenticated").unwrap();
    assert!(unauthenticated.record.requester.subject.contains("not verified"));
    // Nothing reached the site for either.
    let site_dir = nodes[0].audit().unwrap().log().dir().to_path_buf();
    assert_eq!(entries(&site_dir, Filter::default()).unwrap().count(), 0);
}

/// Fail closed: a site whose log cannot be written (a full disk) answers nothing, says why,
/// and answers again once the log can be written. Without the check, the same query is
/// answered (the first and last queries show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_cannot_write_its_log_releases_nothing() {
    let (network, nodes) = start(&[("north", 40), ("south", 30)]).await;
    let sql = "SELECT count(*) AS n FROM vitals";
    let (_, response) = network.query(sql).await.unwrap();
    assert_eq!(status(&response, "north").outcome(), pb::SiteOutcome::Answered);

    let north = &nodes[0];
    let log = north.audit().unwrap().log();
    let before = log.last_seq();
    // The next write fails as on a full disk: the record of the query's arrival.
    log.inject_disk_full(1);
    let (table, response) = network.query(sql).await.unwrap();
    let north_status = status(&response, "north");
    assert_eq!(north_status.outcome(), pb::SiteOutcome::Refused);
    assert!(north_status.message.contains("cannot write its audit log"), "{}", north_status.message);
    assert_eq!(status(&response, "south").outcome(), pb::SiteOutcome::Answered);
    // Only south's 30 patients are counted: north released nothing.
    assert_eq!(verbund_tests::compare::ints(&table, 0), vec![Some(30)]);
    // The record of the arrival was lost with the full disk; the refusal is on record.
    let after: Vec<Entry> = entries(log.dir(), Filter { from_seq: Some(before + 1), ..Filter::default() })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(decisions(&after), [Decision::Failed]);
    assert!(after[0].record.release_hash.is_none(), "nothing released");

    // The disk has room again: north answers, and its chain is intact across the failure.
    let (table, _) = network.query(sql).await.unwrap();
    assert_eq!(verbund_tests::compare::ints(&table, 0), vec![Some(70)]);
    assert!(verify(log.dir(), Some(&log.public_key())).unwrap().is_ok());
    let mut metrics = String::new();
    verbund_ops::prometheus_client::encoding::text::encode(&mut metrics, &north.metrics_registry()).unwrap();
    assert!(metrics.contains("verbund_audit_write_failures_total 1"), "{metrics}");
    assert!(metrics.contains("verbund_audit_records_total"), "{metrics}");
}

/// 64 queries at once: one intact chain at each end, no record lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_queries_leave_one_intact_chain() {
    let (network, nodes) = start(&[("north", 40)]).await;
    let network = Arc::new(network);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let network = network.clone();
        tasks.push(tokio::spawn(async move {
            network.query(&format!("SELECT count(*) AS n FROM vitals WHERE value >= {}", i % 5)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let log = nodes[0].audit().unwrap().log();
    let report = verify(log.dir(), Some(&log.public_key())).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.records, 128, "a received and an answered record per query");
    let coordinator = network.coordinator.audit().unwrap().log();
    assert_eq!(verify(coordinator.dir(), None).unwrap().records, 128);
}

fn list(site: &str) -> pb::AuditRequest {
    pb::AuditRequest { site: site.into(), action: pb::AuditAction::List as i32, ..Default::default() }
}

/// The auditor reads and verifies the coordinator's log and, where the site's policy allows
/// it, a site's; a researcher cannot read; the auditor cannot query; every read is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_read_logs_researchers_do_not_and_every_read_is_recorded() {
    let mut network = Network::start(&["open", "closed"]).await;
    let mut open = open_policy(5);
    open.remote_audit_reads = true;
    let open_node: Arc<Node> = network.node("open", vitals("open", 20), open).into();
    network.add_node(open_node.clone()).await;
    let closed_node: Arc<Node> = network.node("closed", vitals("closed", 20), open_policy(5)).into();
    network.add_node(closed_node.clone()).await;
    network.query("SELECT count(*) AS n FROM vitals").await.unwrap();

    let auditor = network.pki.auditor_token();
    let researcher = network.pki.token();
    let mut client = network.client().await;

    // The coordinator's own log: the query's two records, and a verification.
    let coordinator = client.read_audit(with_token(list(""), &auditor)).await.unwrap().into_inner();
    assert_eq!(coordinator.service, "coordinator");
    assert_eq!(coordinator.entries.len(), 2, "{:?}", coordinator.entries);
    assert!(coordinator.entries[1].contains("\"decision\":\"answered\""));
    let verify = pb::AuditRequest { action: pb::AuditAction::Verify as i32, ..Default::default() };
    let verified = client.read_audit(with_token(verify, &auditor)).await.unwrap().into_inner();
    let verification = verified.verification.unwrap();
    assert!(verification.intact, "{}", verification.problem);
    assert!(verification.records >= 3, "the query's records and the first read");

    // A site that allows it answers over its link; one that does not says so.
    let site = client.read_audit(with_token(list("open"), &auditor)).await.unwrap().into_inner();
    assert_eq!(site.service, "open");
    assert_eq!(site.entries.len(), 2);
    let refused = client.read_audit(with_token(list("closed"), &auditor)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("does not allow remote reads"), "{}", refused.message());

    // A researcher reads nothing, an auditor queries nothing.
    let denied = client.read_audit(with_token(list(""), &researcher)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("auditor"), "{}", denied.message());
    let forwarded = client.read_audit(with_token(list("open"), &researcher)).await.unwrap_err();
    assert_eq!(forwarded.code(), tonic::Code::PermissionDenied);
    let query =
        pb::ResearchQuery { sql: "SELECT count(*) FROM vitals".into(), project: PROJECT.into(), ..Default::default() };
    let cannot = client.query(with_token(query, &auditor)).await.unwrap_err();
    assert_eq!(cannot.code(), tonic::Code::PermissionDenied);
    assert!(cannot.message().contains("cannot submit queries"), "{}", cannot.message());

    // Every read is on record: at the coordinator all six, at each site what reached it.
    let reads = |dir: &std::path::Path| -> Vec<Entry> {
        let filter = Filter { decision: Some(Decision::AuditRead), ..Filter::default() };
        entries(dir, filter).unwrap().map(Result::unwrap).collect()
    };
    let coordinator_dir = network.coordinator.audit().unwrap().log().dir().to_path_buf();
    let at_coordinator = reads(&coordinator_dir);
    assert_eq!(at_coordinator.len(), 6, "{at_coordinator:#?}");
    assert_eq!(at_coordinator.iter().filter(|e| e.record.refusal.is_some()).count(), 3);
    assert!(at_coordinator.iter().any(|e| e.record.requester.subject == "dora-dpo"));
    let open_reads = reads(open_node.audit().unwrap().log().dir());
    assert_eq!(open_reads.len(), 1, "the auditor's read; the researcher's was refused before it left");
    assert_eq!(open_reads[0].record.requester.subject, "dora-dpo");
    assert_eq!(open_reads[0].record.groups_released, Some(2), "two records sent");
    let closed_reads = reads(closed_node.audit().unwrap().log().dir());
    assert_eq!(closed_reads.len(), 1);
    assert!(closed_reads[0].record.refusal.is_some());
}

/// The coordinator's logs and the sites' agree query by query, as `verbund audit reconcile`
/// checks them; a site record removed from a copy of its log is found missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_site_logs_reconcile_and_a_missing_site_record_is_found() {
    use verbund_audit::{FindingKind, Scope, reconcile};
    let (network, nodes) = start(&[("north", 40), ("south", 30)]).await;
    for sql in ["SELECT count(*) AS n FROM vitals", "SELECT ward, sum(value) AS s FROM vitals GROUP BY ward"] {
        network.query(sql).await.unwrap();
    }
    network.query("SELECT value FROM vitals").await.unwrap_err();
    let coordinator_dir = network.coordinator.audit().unwrap().log().dir().to_path_buf();
    let read = |dir: &std::path::Path| entries(dir, Filter::default()).unwrap().collect::<Vec<_>>();
    let sites = |drop_one: bool| {
        nodes
            .iter()
            .map(|n| {
                let mut records = read(n.audit().unwrap().log().dir());
                if drop_one && n.site() == "south" {
                    // A copy of south's log without its last answered record.
                    let last = records.iter().rposition(|e| e.as_ref().unwrap().record.decision == Decision::Answered);
                    let _removed = records.remove(last.unwrap());
                }
                (n.site().to_string(), records)
            })
            .collect::<Vec<_>>()
    };
    let report = reconcile(Scope::default(), read(&coordinator_dir), sites(false)).unwrap();
    assert!(report.is_ok(), "{}", report.render());
    assert_eq!(report.queries, 3);
    assert_eq!(report.site_outcomes_checked, 4, "two sites × two queries that reached them");
    let report = reconcile(Scope::default(), read(&coordinator_dir), sites(true)).unwrap();
    assert_eq!(report.findings.len(), 1, "{}", report.render());
    assert_eq!(report.findings[0].kind, FindingKind::MissingAtSite);
    assert_eq!(report.findings[0].site, "south");
}

/// Fail closed at the coordinator too: a query whose record cannot be written gets no
/// answer; the researcher is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_cannot_write_its_log_releases_nothing() {
    let (network, _nodes) = start(&[("north", 40)]).await;
    let sql = "SELECT count(*) AS n FROM vitals";
    network.query(sql).await.unwrap();
    let log = network.coordinator.audit().unwrap().log();
    // The next write, the query's received record, meets a full disk: nothing goes to the
    // sites, nothing comes back.
    let before = log.last_seq();
    log.inject_disk_full(1);
    let error = network.query(sql).await.expect_err("no answer without its record");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(error.message().contains("cannot write its audit log"), "{}", error.message());
    let after: Vec<Entry> = entries(log.dir(), Filter { from_seq: Some(before + 1), ..Filter::default() })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(after.iter().all(|e| e.record.decision != Decision::Answered), "{after:#?}");
    assert!(after.iter().any(|e| e.record.decision == Decision::Failed), "the failure is on record");
    network.query(sql).await.unwrap();
    assert!(verify(log.dir(), None).unwrap().is_ok());
}
