//! Reading back with filters, lookups, and export as JSON lines and CSV.

use super::*;

async fn log20() -> (tempfile::TempDir, PublicKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_log(AuditConfig { max_segment_bytes: 4096, ..config(dir.path()) }, 20).await;
    (dir, key)
}

fn seqs(dir: &Path, filter: Filter) -> Vec<u64> {
    entries(dir, filter).expect("read").map(|e| e.expect("entry").seq).collect()
}

#[tokio::test]
async fn filters_select_by_time_requester_project_decision_and_query() {
    let (dir, _) = log20().await;
    let dir = dir.path();
    assert_eq!(seqs(dir, Filter::default()), (1..=20).collect::<Vec<_>>());
    let time = Filter { from_ms: Some(T0 + 5000), until_ms: Some(T0 + 8000), ..Filter::default() };
    assert_eq!(seqs(dir, time), [5, 6, 7]);
    let alice = Filter { subject: Some("alice".into()), ..Filter::default() };
    assert_eq!(seqs(dir, alice), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
    let project = Filter { project: Some("p1".into()), ..Filter::default() };
    assert_eq!(seqs(dir, project), [1, 4, 7, 10, 13, 16, 19]);
    let refused = Filter { decision: Some(Decision::Refused), ..Filter::default() };
    assert_eq!(seqs(dir, refused), [1, 8, 15]);
    let query = Filter { query_id: Some("q3".into()), ..Filter::default() };
    assert_eq!(seqs(dir, query), [6, 7]);
    let both = Filter { subject: Some("bob".into()), decision: Some(Decision::AuditRead), ..Filter::default() };
    assert_eq!(seqs(dir, both), [13]);
    let range = Filter { from_seq: Some(11), until_seq: Some(14), ..Filter::default() };
    assert_eq!(seqs(dir, range), [11, 12, 13]);
}

#[tokio::test]
async fn a_selection_keeps_the_newest_and_matches_either_query_id() {
    let (dir, _) = log20().await;
    let dir = dir.path();
    let select = |selection: Selection| -> Vec<u64> {
        selection.entries(dir).expect("read").map(|e| e.expect("entry").seq).collect()
    };
    let alice = Filter { subject: Some("alice".into()), ..Filter::default() };
    let newest = |n| Selection { filter: alice.clone(), limit: Some(n), ..Selection::default() };
    assert_eq!(select(newest(3)), [16, 18, 20], "the newest 3, oldest first");
    assert_eq!(select(newest(100)).len(), 10);
    assert_eq!(select(newest(0)), Vec::<u64>::new());
    assert_eq!(select(Selection { filter: alice, ..Selection::default() }).len(), 10);
    assert_eq!(select(Selection { any_query_id: Some("q3".into()), ..Selection::default() }), [6, 7]);

    // A damaged line is an error, with or without a limit.
    let first = segments(dir)[0].clone();
    let mut lines = read_lines(&first);
    lines[1] = "not an entry".into();
    write_lines(&first, &lines);
    for limit in [None, Some(5)] {
        let selection = Selection { limit, ..Selection::default() };
        assert!(selection.entries(dir).expect("read").any(|e| e.is_err()), "{limit:?}");
    }
}

#[tokio::test]
async fn entries_are_found_by_seq_and_query_id() {
    let (dir, _) = log20().await;
    let entry = get(dir.path(), 13).expect("get").expect("there");
    assert_eq!((entry.seq, &entry.record), (13, &record(13)));
    assert!(entry.record.request_hash_matches());
    assert_eq!(get(dir.path(), 21).expect("get"), None);
    assert_eq!(get(dir.path(), 0).expect("get"), None);
    let query: Vec<Decision> = find_query(dir.path(), "q9").expect("find").iter().map(|e| e.record.decision).collect();
    assert_eq!(query, [record(18).decision, record(19).decision]);
}

#[tokio::test]
async fn exports_as_json_lines_and_csv() {
    let (dir, _) = log20().await;
    let refused =
        || entries(dir.path(), Filter { decision: Some(Decision::Refused), ..Filter::default() }).expect("read");

    let mut jsonl = Vec::new();
    assert_eq!(export_jsonl(refused(), &mut jsonl).expect("export"), 3);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(jsonl).expect("utf8").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["seq"], 8);
    assert_eq!(lines[1]["record"]["refusal"]["code"], "MIN_GROUP");
    let back: Record = serde_json::from_value(lines[1]["record"].clone()).expect("record");
    assert_eq!(back, record(8));

    let mut csv = Vec::new();
    assert_eq!(export_csv(refused(), &mut csv).expect("export"), 3);
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let header: Vec<String> = reader.headers().expect("header").iter().map(str::to_string).collect();
    assert_eq!(header, FlatRow::HEADER);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 3);
    let column = |name: &str| FlatRow::HEADER.iter().position(|h| *h == name).expect("column");
    assert_eq!(&rows[2][column("seq")], "15");
    assert_eq!(&rows[2][column("decision")], "refused");
    assert_eq!(&rows[2][column("time")], "2023-11-14T22:13:35.000Z");
    assert_eq!(&rows[2][column("refusal_reason")], "a group is smaller than 5");
    assert_eq!(&rows[2][column("request")], record(15).request.to_string());
    assert_eq!((&rows[2][column("client_query_id")], &rows[2][column("sites")]), ("", ""));

    let mut empty = Vec::new();
    export_csv(std::iter::empty(), &mut empty).expect("export");
    assert_eq!(String::from_utf8(empty).expect("utf8").trim_end(), FlatRow::HEADER.join(","));
}

#[tokio::test]
async fn a_line_still_being_written_is_not_read() {
    let (dir, _) = log20().await;
    let last = segments(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(b"{\"seq\":21,\"prev\":\"");
    std::fs::write(&last, bytes).expect("write");
    assert_eq!(seqs(dir.path(), Filter::default()).len(), 20);
}
