//! `verbund audit ...` as an operator runs it: the binary, on logs written with
//! `verbund_audit::AuditLog` into temporary directories; output and exit codes checked.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use verbund_audit::{AuditConfig, AuditLog, Decision, FlatRow, Record, Requester, SigningKey, SiteRelease, sha256_hex};

const UUID: &str = "3f6c2a1e-8d4b-4c1a-9e2f-7b5d0c9a8e11";
/// 2026-11-30T10:00:00Z.
const T0: u64 = 1_796_032_800_000;

fn who(subject: &str) -> Requester {
    Requester { subject: subject.into(), project: Some("p1".into()), roles: vec!["researcher".into()] }
}

fn record(service: &str, query_id: &str, decision: Decision, at_s: u64) -> Record {
    Record::new(service, query_id, decision, who("alice"), json!({"table": "patients", "min_group": 5}))
        .with_time_ms(T0 + at_s * 1000)
}

/// Writes `records` as a log in `dir`, and its public key to `dir/signing.pub` (where the
/// services write it).
async fn write_log(dir: &Path, records: &[Record]) {
    let (key, _) = SigningKey::generate_in_memory().expect("key");
    let log = AuditLog::open(AuditConfig::new(dir), key).expect("open");
    for record in records {
        log.append(record).await.expect("append");
    }
    log.close().await.expect("close");
    log.public_key().write(&dir.join("signing.pub")).expect("public key");
}

/// A site's log of three queries: answered, refused, received (in flight).
async fn site_log(dir: &Path) {
    write_log(
        dir,
        &[
            record("site-a", UUID, Decision::Received, 0),
            record("site-a", UUID, Decision::Answered, 1).with_release(b"answer", 4, 1),
            record("site-a", "q-refused", Decision::Received, 60),
            record("site-a", "q-refused", Decision::Refused, 61).with_refusal("MIN_GROUP", "a group is smaller than 5"),
            record("site-a", "q-late", Decision::Received, 86_400),
        ],
    )
    .await;
}

fn verbund(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verbund"))
        .args(args)
        .env_remove("VERBUND_AUDIT_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run verbund")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf8")
}

#[track_caller]
fn exits(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn list_prints_a_table_or_json_lines_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    site_log(dir.path()).await;
    let log = path(dir.path());

    let table = exits(&verbund(&["audit", "list", "--log", log]), 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("seq  time (UTC)") && lines[0].contains("released/withheld"), "{table}");
    assert!(lines[2].contains(UUID) && lines[2].contains("answered") && lines[2].contains("4/1"), "{table}");
    assert!(lines[4].contains("2026-11-30 10:01:01.000") && lines[4].contains("MIN_GROUP"), "{table}");

    let json = exits(&verbund(&["audit", "list", "--log", log, "--format", "json"]), 0);
    let entries: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[3]["seq"], 4);
    assert_eq!(entries[3]["record"]["refusal"]["code"], "MIN_GROUP");
    assert_eq!(entries[3]["hash"].as_str().map(str::len), Some(64));

    // Filters, through the environment's log directory too.
    let filtered = |args: &[&str]| -> Vec<u64> {
        let output = Command::new(env!("CARGO_BIN_EXE_verbund"))
            .args(["audit", "list", "--format", "json"])
            .args(args)
            .env("VERBUND_AUDIT_LOG", log)
            .output()
            .expect("run");
        let text = exits(&output, 0);
        text.lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["seq"].as_u64().expect("seq")).collect()
    };
    assert_eq!(filtered(&["--decision", "refused"]), [4]);
    assert_eq!(filtered(&["--query-id", UUID]), [1, 2]);
    assert_eq!(filtered(&["--since", "2026-11-30T10:01:00Z", "--until", "2026-11-30"]), [3, 4]);
    assert_eq!(filtered(&["--since", "2026-12-01"]), [5]);
    assert_eq!(filtered(&["--limit", "2"]), [4, 5]);
    assert_eq!(filtered(&["--subject", "bob"]), Vec::<u64>::new());

    // Bad input is a usage error (2) that says what to write.
    let output = verbund(&["audit", "list", "--log", log, "--since", "2026-11-30T10:00"]);
    exits(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("2026-11-30T10:00:00Z"));
    exits(&verbund(&["audit", "list", "--log", log, "--decision", "maybe"]), 2);
    exits(&verbund(&["audit", "list", "--log", path(&dir.path().join("nowhere"))]), 2);
}

#[tokio::test]
async fn show_prints_a_record_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    site_log(dir.path()).await;
    let log = path(dir.path());
    let text = exits(&verbund(&["audit", "show", "--log", log, "4"]), 0);
    for line in ["seq:              4", "decision:         refused", "refusal reason:   a group is smaller than 5"] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert!(text.contains("request:\n  {\n    \"min_group\": 5,"), "{text}");

    let text = exits(&verbund(&["audit", "show", "--log", log, "--query-id", UUID]), 0);
    assert_eq!(text.matches("query id:         ").count(), 2, "{text}");
    let json = exits(&verbund(&["audit", "show", "--log", log, "--query-id", UUID, "--format", "json"]), 0);
    let entries: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(entries.iter().map(|e| e["seq"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2)]);

    exits(&verbund(&["audit", "show", "--log", log, "99"]), 2);
    exits(&verbund(&["audit", "show", "--log", log]), 2);
}

#[tokio::test]
async fn verify_exits_0_when_intact_and_1_naming_the_seq_of_an_altered_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    site_log(dir.path()).await;
    let log = path(dir.path());
    let text = exits(&verbund(&["audit", "verify", "--log", log]), 0);
    assert!(text.contains("intact") && text.contains("5 (seq 1 to 5)"), "{text}");
    assert!(text.contains("1 signature(s) verified with") && text.contains("signing.pub"), "{text}");

    // Without the public key, the chain alone (and it says so).
    let key = dir.path().join("signing.pub");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let kept = elsewhere.path().join("audit.pub");
    std::fs::rename(&key, &kept).expect("move key");
    let text = exits(&verbund(&["audit", "verify", "--log", log]), 0);
    assert!(text.contains("signatures:   NOT checked"), "{text}");
    let text = exits(&verbund(&["audit", "verify", "--log", log, "--public-key", path(&kept)]), 0);
    assert!(text.contains("1 signature(s) verified"), "{text}");
    exits(&verbund(&["audit", "verify", "--log", log, "--public-key", path(&key)]), 2);

    // One byte of record 3 changed.
    let segment = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("segment-")))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let third = bytes.split(|b| *b == b'\n').take(2).map(|l| l.len() + 1).sum::<usize>();
    let at = third + bytes[third..].windows(5).position(|w| w == b"alice").expect("subject");
    bytes[at] = b'A';
    std::fs::write(&segment, bytes).expect("write");
    let text = exits(&verbund(&["audit", "verify", "--log", log, "--public-key", path(&kept)]), 1);
    assert!(text.contains("PROBLEM FOUND"), "{text}");
    assert!(text.contains("line:         3") && text.contains("seq:          3"), "{text}");
    assert!(text.contains("altered") && text.contains(path(&segment)), "{text}");

    exits(&verbund(&["audit", "verify", "--log", path(&dir.path().join("nowhere"))]), 2);
}

#[tokio::test]
async fn export_writes_csv_with_its_header_and_one_row_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    site_log(dir.path()).await;
    let log = path(dir.path());
    let csv = exits(&verbund(&["audit", "export", "--log", log, "--format", "csv"]), 0);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], FlatRow::HEADER.join(","));
    assert_eq!(lines.len(), 1 + 5, "{csv}");
    assert!(lines[4].starts_with("4,2026-11-30T10:01:01.000Z,"), "{csv}");

    let filtered = exits(&verbund(&["audit", "export", "--log", log, "--format", "csv", "--query-id", UUID]), 0);
    assert_eq!(filtered.lines().count(), 1 + 2);

    let out = dir.path().join("export.jsonl");
    exits(&verbund(&["audit", "export", "--log", log, "--format", "jsonl", "--out", path(&out)]), 0);
    let text = std::fs::read_to_string(&out).expect("export");
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(entries.len(), 5);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);
    }
    // An existing file is not overwritten.
    let output = verbund(&["audit", "export", "--log", log, "--format", "csv", "--out", path(&out)]);
    exits(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not overwritten"));
    assert_eq!(std::fs::read_to_string(&out).expect("export"), text);
}

#[tokio::test]
async fn reconcile_finds_a_site_without_the_record_the_coordinator_vouches_for() {
    let root = tempfile::tempdir().expect("tempdir");
    let (coordinator, site_a, site_b) = (root.path().join("c"), root.path().join("a"), root.path().join("b"));
    let sites = vec![
        SiteRelease {
            site: "site-a".into(),
            outcome: "answered".into(),
            release_hash: Some(sha256_hex(b"answer")),
            privacy_cost: None,
        },
        SiteRelease { site: "site-b".into(), outcome: "refused".into(), release_hash: None, privacy_cost: None },
    ];
    write_log(
        &coordinator,
        &[
            record("coordinator", UUID, Decision::Received, 0).with_client_query_id("mine"),
            record("coordinator", UUID, Decision::Answered, 2).with_client_query_id("mine").with_sites(sites),
        ],
    )
    .await;
    write_log(
        &site_a,
        &[
            record("site-a", UUID, Decision::Received, 0),
            record("site-a", UUID, Decision::Answered, 1).with_release(b"answer", 4, 1),
        ],
    )
    .await;
    // site-b logged receiving the query, and no outcome.
    write_log(&site_b, &[record("site-b", UUID, Decision::Received, 0)]).await;

    let args = |site_b_log: &str| {
        vec![
            "audit".to_string(),
            "reconcile".into(),
            "--coordinator-log".into(),
            path(&coordinator).into(),
            "--site-log".into(),
            format!("site-a={}", path(&site_a)),
            "--site-log".into(),
            format!("site-b={site_b_log}"),
        ]
    };
    let run = |args: Vec<String>| Command::new(env!("CARGO_BIN_EXE_verbund")).args(args).output().expect("run");
    let text = exits(&run(args(path(&site_b))), 1);
    let findings: Vec<&str> = text.lines().filter(|l| l.starts_with("missing_at_site")).collect();
    assert_eq!(findings.len(), 1, "{text}");
    assert!(findings[0].contains("site-b") && findings[0].contains(UUID) && findings[0].contains("(mine)"), "{text}");
    assert!(text.contains("1 query of the coordinator, 2 site outcomes checked against 2 site logs"), "{text}");
    assert!(text.contains("1 finding"), "{text}");

    let mut json_args = args(path(&site_b));
    json_args.extend(["--format".into(), "json".into(), "--query-id".into(), "mine".into()]);
    let report: Value = serde_json::from_str(&exits(&run(json_args), 1)).expect("json");
    assert_eq!(report["findings"][0]["kind"], "missing_at_site");
    assert_eq!(report["findings"][0]["site"], "site-b");
    assert_eq!(report["queries"], 1);

    // Once site-b's log has its outcome, everything matches.
    let site_b_fixed = root.path().join("b2");
    write_log(
        &site_b_fixed,
        &[
            record("site-b", UUID, Decision::Received, 0),
            record("site-b", UUID, Decision::Refused, 1).with_refusal("MIN_GROUP", "too small"),
        ],
    )
    .await;
    let text = exits(&run(args(path(&site_b_fixed))), 0);
    assert!(text.contains("everything matches"), "{text}");

    // Usage: NAME=DIR, and --query-id or a time window, not both.
    exits(&verbund(&["audit", "reconcile", "--coordinator-log", path(&coordinator), "--site-log", "site-a"]), 2);
    let mut both = args(path(&site_b));
    both.extend(["--query-id".into(), "mine".into(), "--since".into(), "2026-11-30".into()]);
    exits(&run(both), 2);
}
