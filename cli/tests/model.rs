//! `verbund model`, the real binary, against an in-process network of the generated sites
//! (k-only, k = 5): a logistic fit printed as R's summary and as JSON, and the coordinator's
//! refusal printed as `verbund query` prints one.

use std::process::Output;
use verbund_tests::{Network, PROJECT, Synthetic, open_policy};

/// Runs `verbund model` against the network with `args` after the connection flags.
fn verbund_model(network: &Network, token: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_verbund"))
        .arg("model")
        .args(["--coordinator", &network.api, "--project", PROJECT, "--dataset", "patients"])
        .arg("--ca")
        .arg(&network.pki.ca_path)
        .arg("--token-file")
        .arg(token)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run verbund model")
}

const LOGISTIC: &[&str] = &[
    "--family",
    "logistic",
    "--outcome",
    "deceased",
    "--covariates",
    "age,bmi,smoker",
    "--where",
    "age >= 18",
    "--reference",
    "smoker=false",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbund_model_fits_and_prints() {
    let synthetic = Synthetic::new(7, 0.5).await.unwrap();
    let network = synthetic.network(open_policy(5), &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("researcher.token");
    std::fs::write(&token, network.pki.token()).unwrap();
    let sites: Vec<&str> = synthetic.sites.iter().map(|s| s.site.as_str()).collect();

    let out = verbund_model(&network, &token, LOGISTIC);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("Generalized linear model fitted across sites on "), "{stdout}");
    assert!(stdout.contains("binomial family, logit link") && stdout.contains("(Intercept)"), "{stdout}");
    assert!(stdout.contains("\nsite ") && stdout.contains("status") && !stdout.contains("groups"), "{stdout}");
    // The children's hospital has too few adults (R1) and is left out, as a note says.
    let answered = |site: &str| stdout.lines().any(|l| l.starts_with(site) && l.contains(" answered "));
    assert!(sites.iter().filter(|s| answered(s)).count() >= 2, "{stdout}");
    assert!(stdout.contains("\nnote: fitted on 2 of 3 sites; left out: kinderklinik-west"), "{stdout}");
    let last = stdout.trim_end().lines().last().unwrap();
    assert!(last.starts_with("rounds: ") && last.contains(", attempts: "), "{stdout}");

    let mut json_args = LOGISTIC.to_vec();
    json_args.push("--json");
    let out = verbund_model(&network, &token, &json_args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        v["fit"]["coefficients"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(&names[..3], ["(Intercept)", "age", "bmi"]);
    assert!(names[3].starts_with("smoker"), "{names:?}");
    assert!(v["fit"]["n"].as_u64().unwrap() > 0);
    assert_eq!(v["sites"].as_array().unwrap().len(), sites.len());
    assert!(v["rounds"].as_u64().unwrap() > 1, "IRLS takes rounds: {v}");
    assert!(v["attempts"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("left out")), "{v}");

    // The coordinator's refusal: its message and code on stderr, exit code 1, nothing on stdout.
    let out = verbund_model(&network, &token, &["--family", "linear", "--outcome", "bmi", "--covariates", "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("nope") && stderr.contains("(InvalidArgument)"), "{stderr}");
}
