//! `verbund submit`, `status`, `result`, `list`, and the progress `query` shows: the real
//! binary against an in-process network of the generated sites (k-only, k = 5).

use std::process::Output;
use verbund_tests::{Network, PROJECT, Synthetic, open_policy};

fn verbund(network: &Network, token: &std::path::Path, command: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_verbund"))
        .arg(command)
        .args(["--coordinator", &network.api])
        .arg("--ca")
        .arg(&network.pki.ca_path)
        .arg("--token-file")
        .arg(token)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VERBUND_PROJECT")
        .output()
        .expect("run verbund")
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.into_owned()
}

const SQL: &str = "SELECT sex, count(*) AS n FROM patients GROUP BY sex";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_status_result_and_list_from_other_processes() {
    let synthetic = Synthetic::new(7, 0.3).await.unwrap();
    let network = synthetic.network(open_policy(5), &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("researcher.token");
    std::fs::write(&token, network.pki.token()).unwrap();

    let submitted = ok(&verbund(&network, &token, "submit", &["--project", PROJECT, "--id", "q-1", SQL]));
    assert!(submitted.starts_with("q-1\t"), "{submitted}");

    let waited = verbund(&network, &token, "status", &["q-1", "--wait", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&waited)).unwrap();
    assert_eq!(status["state"], "QUERY_STATE_DONE", "{status}");
    assert_eq!(status["sites"].as_array().unwrap().len(), 3, "{status}");

    let stored: serde_json::Value =
        serde_json::from_str(&ok(&verbund(&network, &token, "result", &["q-1", "--format", "json"]))).unwrap();
    let blocking = verbund(&network, &token, "query", &["--project", PROJECT, "--format", "json", SQL]);
    let blocking: serde_json::Value = serde_json::from_str(&ok(&blocking)).unwrap();
    assert_eq!(stored["rows"], blocking["rows"], "the stored answer is what `query` prints");
    assert!(stored["rows"].as_array().is_some_and(|r| !r.is_empty()), "{stored}");

    // Not on a terminal, `query` shows its progress as plain lines on stderr; stdout is the table.
    let out = verbund(&network, &token, "query", &["--project", PROJECT, "--id", "q-2", SQL]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("q-2 done: 3 of 3 sites finished (")), "{stderr}");
    assert!(!stdout.contains("sites finished"), "{stdout}");

    let listed = ok(&verbund(&network, &token, "list", &[]));
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "q-2, the blocking query, q-1:\n{listed}");
    assert!(rows[0].starts_with("q-2\tquery\tdone\t3/3\t"), "{listed}");
    assert!(rows[2].starts_with("q-1\tquery\tdone\t3/3\t") && rows[2].ends_with(SQL), "{listed}");

    // A model fit, submitted and fetched later.
    let fit = [
        "--project",
        PROJECT,
        "--dataset",
        "patients",
        "--family",
        "linear",
        "--outcome",
        "bmi",
        "--covariates",
        "age",
        "--submit",
        "--id",
        "fit-1",
    ];
    assert!(ok(&verbund(&network, &token, "model", &fit)).starts_with("fit-1\t"));
    let waited = ok(&verbund(&network, &token, "status", &["fit-1", "--wait"]));
    assert!(waited.starts_with("fit-1 (model, alice of project study): done"), "{waited}");
    let result = ok(&verbund(&network, &token, "result", &["fit-1"]));
    assert!(result.starts_with("Linear model (least squares) fitted across sites"), "{result}");

    // Unknown ids: the coordinator's message and code, exit code 1, nothing on stdout.
    let out = verbund(&network, &token, "result", &["nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("no query 'nope'") && stderr.contains("(NotFound)"), "{stderr}");
}
