//! The web page in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! against the demo network (`verbund demo --serve`). A researcher logs in with the keyboard,
//! asks in SQL and in CCDL and sees the CLI's numbers, with a chart; an auditor reads the
//! audit log, verifies it and reconciles the researcher's query; a researcher's token cannot
//! open the operators' view. Screenshots of the main views go to `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test says so and passes, unless `VERBUND_BROWSER_TESTS=required` (as in CI), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const SQL: &str = "SELECT sex, count(DISTINCT patient_id) AS patients FROM patients GROUP BY sex";

/// Chromedriver on a free loopback port, stopped when dropped.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn driver_path() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|| CHROMEDRIVER.into());
    path.exists().then_some(path)
}

async fn start_driver(path: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    Driver(child, port)
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        // The demo's certificate is its own CA's, which this fresh profile does not know.
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": binary,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
    let url = format!("http://127.0.0.1:{}", driver.1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver at {url} did not start a browser: {e}"),
        }
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

/// Waits (the page follows the query by reloading) until `css` is on the page.
async fn wait_for(client: &Client, css: &str, timeout: Duration) -> fantoccini::elements::Element {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(found) = client.find(Locator::Css(css)).await {
            return found;
        }
        if Instant::now() > deadline {
            let source = client.source().await.unwrap_or_default();
            panic!("{css} did not appear within {timeout:?}; the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn login(client: &Client, web: &str, token: &str) {
    client.goto(&format!("{web}login")).await.unwrap();
    let field = client.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    // Keyboard only: from the token field, Tab reaches the button and Enter presses it.
    field.send_keys(&Key::Tab.to_string()).await.unwrap();
    let focused = client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("login"), "Tab leads to the login button");
    focused.send_keys(&Key::Enter.to_string()).await.unwrap();
    wait_for(client, "form.who", Duration::from_secs(10)).await;
}

/// The result table's rows as text cells.
async fn result_rows(client: &Client) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for row in client.find_all(Locator::Css("#result tbody tr")).await.unwrap() {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(cell.text().await.unwrap());
        }
        rows.push(cells);
    }
    rows
}

/// Asks from the query form and waits for the answer; returns the query's id and its rows.
async fn ask(client: &Client, web: &str, sql: &str, ccdl: &str) -> (String, Vec<Vec<String>>) {
    client.goto(&format!("{web}query")).await.unwrap();
    if !sql.is_empty() {
        client.find(Locator::Id("sql")).await.unwrap().send_keys(sql).await.unwrap();
    }
    if !ccdl.is_empty() {
        // As pasted: the whole document at once, through the page's own field.
        let field = client.find(Locator::Id("ccdl")).await.unwrap();
        client
            .execute("arguments[0].value = arguments[1];", vec![serde_json::to_value(&field).unwrap(), ccdl.into()])
            .await
            .unwrap();
    }
    client.find(Locator::Id("submit")).await.unwrap().click().await.unwrap();
    wait_for(client, "#result", Duration::from_secs(90)).await;
    assert_eq!(text(client, "#state").await, "done");
    let url = client.current_url().await.unwrap();
    let id = url.path().rsplit('/').next().unwrap().to_string();
    (id, result_rows(client).await)
}

/// `verbund query --format json` against the same network.
fn cli_rows(info: &serde_json::Value, args: &[&str]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_verbund"))
        .arg("query")
        .args(["--coordinator", info["api"].as_str().unwrap()])
        .args(["--ca", info["ca"].as_str().unwrap()])
        .args(["--token-file", info["token_file"].as_str().unwrap()])
        .args(["--project", info["project"].as_str().unwrap(), "--format", "json"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["rows"].as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect()
}

/// The page's cell and the CLI's value are the same number (or the same text).
fn same(cell: &str, value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => cell == s,
        serde_json::Value::Number(n) => {
            let (a, b) = (cell.parse::<f64>().unwrap_or(f64::NAN), n.as_f64().unwrap());
            (a - b).abs() <= 1e-9 * b.abs().max(1.0)
        }
        serde_json::Value::Null => cell == "–",
        other => *other == serde_json::Value::String(cell.to_string()) || cell == other.to_string().as_str(),
    }
}

fn assert_same(page: &[Vec<String>], cli: &[serde_json::Map<String, serde_json::Value>], columns: &[&str]) {
    assert_eq!(page.len(), cli.len(), "page {page:?} cli {cli:?}");
    assert!(!page.is_empty());
    for (row, expected) in page.iter().zip(cli) {
        for (cell, column) in row.iter().zip(columns) {
            assert!(
                same(cell, &expected[*column]),
                "{column}: page {cell} cli {} ({page:?} vs {cli:?})",
                expected[*column]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researchers_and_auditors_in_a_real_browser() {
    let Some(driver_path) = driver_path() else {
        let required = std::env::var("VERBUND_BROWSER_TESTS").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "VERBUND_BROWSER_TESTS=required but {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
        );
        eprintln!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver; CI requires it)");
        return;
    };
    verbund_security::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let info_path = dir.path().join("demo.json");
    let stop = CancellationToken::new();
    let demo = tokio::spawn({
        let (path, stop) = (info_path.clone(), stop.clone());
        async move { verbund_cli::demo::serve(11, 0.2, Some(&path), stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    while !info_path.exists() {
        assert!(Instant::now() < deadline && !demo.is_finished(), "the demo network did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let web = info["web"].as_str().unwrap().to_string();
    let researcher = std::fs::read_to_string(info["token_file"].as_str().unwrap()).unwrap().trim().to_string();
    let auditor = std::fs::read_to_string(info["auditor_token_file"].as_str().unwrap()).unwrap().trim().to_string();

    let driver = start_driver(&driver_path).await;
    let client = browser(&driver, &dir.path().join("chromium")).await;

    // Not logged in: the login page.
    client.goto(&web).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/login");
    screenshot(&client, "login").await;
    login(&client, &web, &researcher).await;
    assert_eq!(client.current_url().await.unwrap().path(), "/query");

    // Sites with their catalogues.
    client.goto(&format!("{web}sites")).await.unwrap();
    assert_eq!(client.find_all(Locator::Css("section.site")).await.unwrap().len(), 3);
    screenshot(&client, "sites").await;

    // A validation error is shown next to the input, and the text stays.
    client.goto(&format!("{web}query")).await.unwrap();
    client.find(Locator::Id("sql")).await.unwrap().send_keys("SELECT count(*) FROM nowhere").await.unwrap();
    client.find(Locator::Id("submit")).await.unwrap().click().await.unwrap();
    let error = wait_for(&client, "#error-sql", Duration::from_secs(10)).await.text().await.unwrap();
    assert!(error.contains("nowhere"), "{error}");
    let sql_field = client.find(Locator::Id("sql")).await.unwrap();
    assert_eq!(sql_field.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
    assert!(sql_field.attr("aria-describedby").await.unwrap().unwrap().contains("error-sql"));

    // SQL: the page's numbers are the CLI's; the grouped count is drawn.
    let (sql_id, rows) = ask(&client, &web, SQL, "").await;
    let bars = client.find_all(Locator::Css(".chart svg rect.bar")).await.unwrap();
    assert_eq!(bars.len(), rows.len(), "one bar per group");
    let widths: Vec<f64> = {
        let mut w = Vec::new();
        for bar in &bars {
            w.push(bar.attr("width").await.unwrap().unwrap().parse().unwrap());
        }
        w
    };
    assert!(widths.iter().all(|w| *w > 0.0), "{widths:?}");
    let (_, _, width, height) = client.find(Locator::Css("#chart-1 svg")).await.unwrap().rectangle().await.unwrap();
    assert!(width > 200.0 && height > 20.0, "the chart is drawn ({width} × {height})");
    screenshot(&client, "query-result").await;
    assert_same(&rows, &cli_rows(&info, &[SQL]), &["sex", "patients"]);

    // CCDL: the MII example, pasted.
    let ccdl = verbund_cli::demo::CCDL_EXAMPLE;
    let (_, ccdl_rows) = ask(&client, &web, "", ccdl).await;
    let ccdl_file = dir.path().join("cohort.json");
    std::fs::write(&ccdl_file, ccdl).unwrap();
    let cli = cli_rows(&info, &["--ccdl", ccdl_file.to_str().unwrap()]);
    let column = cli[0].keys().next().unwrap().clone();
    assert_same(&ccdl_rows, &cli, &[column.as_str()]);
    screenshot(&client, "ccdl-result").await;

    // A linear model across the sites: the page's fit is the CLI's (a repeated fit costs the
    // differentially private sites nothing and gives the same numbers).
    client.goto(&format!("{web}model")).await.unwrap();
    client.find(Locator::Id("outcome")).await.unwrap().send_keys("bmi").await.unwrap();
    client.find(Locator::Id("covariates")).await.unwrap().send_keys("age, smoker").await.unwrap();
    client.find(Locator::Id("condition")).await.unwrap().send_keys("age >= 18").await.unwrap();
    client.find(Locator::Id("fit")).await.unwrap().click().await.unwrap();
    let shown = wait_for(&client, "#model-summary, #query-error", Duration::from_secs(90)).await;
    let fitted = shown.attr("id").await.unwrap().as_deref() == Some("model-summary");
    let page_text = shown.text().await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_verbund"))
        .arg("model")
        .args(["--coordinator", info["api"].as_str().unwrap()])
        .args(["--ca", info["ca"].as_str().unwrap()])
        .args(["--token-file", info["token_file"].as_str().unwrap()])
        .args(["--project", info["project"].as_str().unwrap()])
        .args(["--family", "linear", "--outcome", "bmi", "--covariates", "age,smoker", "--dataset", "patients"])
        .args(["--where", "age >= 18"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (cli, cli_err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if fitted {
        assert!(out.status.success(), "{cli}{cli_err}");
        let coefficients = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| ["(Intercept)", "age", "smoker"].iter().any(|c| l.starts_with(c)))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert!(page_text.contains("(Intercept)") && page_text.contains("smoker"), "{page_text}");
        assert_eq!(coefficients(&page_text), coefficients(&cli), "page:\n{page_text}\ncli:\n{cli}");
    } else {
        // The sites' noisy statistics may not determine a fit at this size: the page says what
        // the CLI says.
        assert!(!out.status.success(), "page: {page_text}\ncli: {cli}");
        assert!(cli_err.contains(page_text.trim()), "page: {page_text}\ncli: {cli_err}");
    }
    screenshot(&client, "model").await;

    // The researcher's queries, and no way into the operators' view.
    client.goto(&format!("{web}queries")).await.unwrap();
    assert!(client.find_all(Locator::Css("#queries tbody tr")).await.unwrap().len() >= 2);
    for path in ["operations", "audit"] {
        client.goto(&format!("{web}{path}")).await.unwrap();
        assert_eq!(text(&client, "h1").await, "Not allowed", "{path}");
    }

    // The auditor: the audit log, verify, and the researcher's query reconciled.
    client.find(Locator::Css("form.who button")).await.unwrap().click().await.unwrap();
    wait_for(&client, "#token", Duration::from_secs(10)).await;
    login(&client, &web, &auditor).await;
    assert_eq!(client.current_url().await.unwrap().path(), "/operations");
    assert_eq!(client.find_all(Locator::Css("#health tbody tr")).await.unwrap().len(), 3);
    screenshot(&client, "operations").await;
    client.goto(&format!("{web}query")).await.unwrap();
    assert!(client.find(Locator::Id("query-form")).await.is_err(), "an auditor gets no query form");
    client.goto(&format!("{web}audit")).await.unwrap();
    assert!(!client.find_all(Locator::Css("#records tbody tr")).await.unwrap().is_empty());
    client.find(Locator::Id("verify")).await.unwrap().click().await.unwrap();
    let verdict = wait_for(&client, "#verdict", Duration::from_secs(20)).await.text().await.unwrap();
    assert!(verdict.contains("The coordinator log is intact"), "{verdict}");
    screenshot(&client, "audit-verify").await;
    client.find(Locator::Id("reconcile-id")).await.unwrap().send_keys(&sql_id).await.unwrap();
    client.find(Locator::Id("reconcile")).await.unwrap().click().await.unwrap();
    let reconciled = wait_for(&client, "#verdict", Duration::from_secs(30)).await.text().await.unwrap();
    assert!(reconciled.contains("The logs agree"), "{reconciled}");

    client.close().await.unwrap();
    drop(driver);
    stop.cancel();
    demo.await.unwrap().unwrap();
}
