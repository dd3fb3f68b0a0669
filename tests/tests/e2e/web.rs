//! The web page over HTTP/2 and TLS on the researcher API's listener, without a browser: the
//! session, the security headers, the roles, what a refused answer leaves on the page, and
//! that the page shows the API's numbers. (The browser test is cli/tests/browser.rs.)

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use std::sync::Arc;
use std::time::Duration;
use verbund_node::Node;
use verbund_proto::v1 as pb;
use verbund_tests::{Network, PROJECT, memory_catalogue, open_policy, with_token};

/// A ward table whose "rare" ward holds 3 patients at each site: below a minimum cell size
/// of 5, so a site with the defence withholds it.
fn wards(site: &str, common: i64) -> verbund_node::Catalogue {
    let n = common + 3;
    let ids: Vec<String> = (0..n).map(|i| format!("{site}-{i}")).collect();
    let ward: Vec<&str> = (0..n).map(|i| if i < common { "common-ward" } else { "rare-ward-x" }).collect();
    let band: Vec<&str> = (0..n).map(|i| if i % 3 == 0 { "low" } else { "high" }).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as Arc<dyn Array>),
        ("ward", Arc::new(StringArray::from(ward)) as _),
        ("band", Arc::new(StringArray::from(band)) as _),
        ("value", Arc::new(Int64Array::from_iter_values(0..n)) as _),
    ])
    .unwrap();
    memory_catalogue("wards", vec![batch], &["ward", "band", "value"])
}

/// Two sites with the given minimum cell size, whose logs auditors may read.
async fn network(k: u32) -> Network {
    let mut network = Network::start(&["north", "south"]).await;
    for (site, common) in [("north", 40), ("south", 25)] {
        let mut policy = open_policy(k);
        policy.remote_audit_reads = true;
        let node: Arc<Node> = network.node(site, wards(site, common), policy).into();
        network.add_node(node).await;
    }
    network
}

/// A browser-like client: trusts the network's CA, follows no redirect, keeps no cookie.
fn client(network: &Network) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&network.pki.ca_path).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    /// Logged in with `token` (the login form's POST, as a browser sends it).
    async fn login(network: &Network, token: &str) -> Browser {
        let mut browser = Browser { http: client(network), base: network.api.clone(), cookie: String::new() };
        let page = browser.post("/login", &[("token", token)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let cookie = page.headers[SET_COOKIE].to_str().unwrap().to_string();
        for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        browser.cookie = cookie.split(';').next().unwrap().to_string();
        browser
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Page {
        let request = if self.cookie.is_empty() { request } else { request.header("cookie", &self.cookie) };
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        Page { status, headers, body: response.text().await.unwrap() }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form_body(form);
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.base)
            .body(body);
        self.send(request).await
    }

    /// Submits `sql` from the query form and follows the query's page until it has ended.
    async fn run_query(&self, sql: &str) -> (String, Page) {
        let submitted = self.post("/query", &[("project", PROJECT), ("sql", sql)]).await;
        assert_eq!(submitted.status, StatusCode::SEE_OTHER, "{}", submitted.body);
        let location = submitted.headers[LOCATION].to_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page = self.get(&location).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            if !page.body.contains("data-follow=") {
                return (location, page);
            }
            assert!(std::time::Instant::now() < deadline, "the query did not end: {}", page.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn form_body(form: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (k, v) in form {
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(&format!("{k}={}", urlencode(v)));
    }
    body
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The cells of the page's result table, row by row.
fn result_cells(html: &str) -> Vec<Vec<String>> {
    let Some(start) = html.find("<table id=\"result\">") else { return Vec::new() };
    let table = &html[start..start + html[start..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let cell = &cell[cell.find('>').unwrap() + 1..];
                    cell[..cell.find("</td>").unwrap()].to_string()
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_login_and_come_with_a_strict_policy_and_nothing_from_elsewhere() {
    let network = network(5).await;
    let anonymous = Browser { http: client(&network), base: network.api.clone(), cookie: String::new() };
    let page = anonymous.get("/sites").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers[LOCATION], "/login");

    let login = anonymous.get("/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(login.headers[CONTENT_SECURITY_POLICY], verbund_coordinator::web::CONTENT_SECURITY_POLICY);
    assert!(verbund_coordinator::web::CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    assert_eq!(login.headers["x-content-type-options"], "nosniff");

    // A forged or foreign token gets the login again, with the reason.
    let stranger = verbund_security::token::DevIssuer::generate("other", "https://idp.test", "verbund").unwrap();
    let forged = stranger.issue("mallory", &[PROJECT], &["researcher"], Duration::from_secs(600));
    let refused = anonymous.post("/login", &[("token", &forged)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body.contains("not accepted"), "{}", refused.body);
    assert!(!refused.headers.contains_key(SET_COOKIE));
    let with_forged = Browser { cookie: format!("{}={forged}", verbund_coordinator::web::COOKIE), ..anonymous };
    let ended = with_forged.get("/sites").await;
    assert_eq!(ended.status, StatusCode::UNAUTHORIZED);
    assert!(ended.body.contains("session ended"), "{}", ended.body);

    // Every page of a researcher's session loads only the page's own style sheet and script.
    let researcher = Browser::login(&network, &network.pki.token()).await;
    let (_, query) = researcher.run_query("SELECT ward, count(*) AS n FROM wards GROUP BY ward").await;
    for path in ["/sites", "/query", "/queries"] {
        let page = researcher.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        check_only_own_resources(path, &page.body);
    }
    check_only_own_resources("query page", &query.body);
    for asset in ["/static/verbund.css", "/static/verbund.js"] {
        let page = researcher.get(asset).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("http://") && !page.body.contains("https://"), "{asset} fetches from elsewhere");
    }
}

fn check_only_own_resources(what: &str, html: &str) {
    for attribute in ["src=\"", "href=\"", "action=\""] {
        for (i, _) in html.match_indices(attribute) {
            let value = &html[i + attribute.len()..];
            assert!(
                value.starts_with('/') || value.starts_with('#'),
                "{what}: {attribute}{}",
                &value[..40.min(value.len())]
            );
        }
    }
    assert!(!html.contains("style=\""), "{what}: an inline style (the CSP refuses it)");
    assert!(!html.contains("<script>"), "{what}: an inline script (the CSP refuses it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_from_the_page_shows_the_apis_numbers_as_table_chart_and_csv() {
    let network = network(5).await;
    let researcher = Browser::login(&network, &network.pki.token()).await;
    let sql = "SELECT ward, count(*) AS n, sum(value) AS s FROM wards GROUP BY ward";
    let (location, page) = researcher.run_query(sql).await;
    assert!(page.body.contains(">done<"), "{}", page.body);
    let (expected, _) = network.query(sql).await.unwrap();
    let wards = expected.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let counts = expected.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let sums = expected.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    let expected_rows: Vec<Vec<String>> = (0..expected.num_rows())
        .map(|r| vec![wards.value(r).to_string(), counts.value(r).to_string(), sums.value(r).to_string()])
        .collect();
    assert_eq!(result_cells(&page.body), expected_rows);
    // One group survives the minimum cell size: no chart of one bar, but the table.
    assert_eq!(expected_rows.len(), 1);

    // The CSV holds the same numbers.
    let csv = researcher.get(&format!("{location}/result.csv")).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let mut lines = csv.body.lines();
    assert_eq!(lines.next(), Some("ward,n,s"));
    let csv_rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(csv_rows, expected_rows);

    // Sites with their outcome, and the notes.
    assert!(page.body.contains("<th scope=\"row\">north</th>") && page.body.contains("<th scope=\"row\">south</th>"));
    assert!(page.body.contains("Privacy notes"), "{}", page.body);

    // A grouped count of two groups is drawn: one bar per group, scaled to the numbers.
    let (_, grouped) =
        researcher.run_query("SELECT ward, count(*) AS n FROM wards WHERE value < 20 GROUP BY ward").await;
    assert!(!grouped.body.contains("<svg"), "one group only, no chart");
    let (_, charted) = researcher.run_query("SELECT band, count(*) AS n FROM wards GROUP BY band").await;
    assert_eq!(charted.body.matches("<rect class=\"bar\"").count(), 2, "{}", charted.body);
    assert!(charted.body.contains("<title id=\"chart-title-1\">n by band</title>"));
}

/// The attack: a group of 3 patients ("rare-ward-x") asked for by name. With the minimum cell
/// size the page holds nothing of it; without the defence (k = 1) the same page shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_withheld_cell_reaches_the_page_and_without_the_defence_it_would() {
    let sql = "SELECT ward, count(*) AS n FROM wards GROUP BY ward";
    for (k, shown) in [(5, false), (1, true)] {
        let network = network(k).await;
        let researcher = Browser::login(&network, &network.pki.token()).await;
        let (_, page) = researcher.run_query(sql).await;
        let cells = result_cells(&page.body);
        assert_eq!(page.body.contains("rare-ward-x"), shown, "k = {k}: {}", page.body);
        assert_eq!(cells.iter().any(|r| r[0] == "rare-ward-x" && r[1] == "6"), shown, "k = {k}: {cells:?}");
        if !shown {
            assert!(page.body.contains("fewer than k = 5 patients"), "the notes say what is withheld: {}", page.body);
        }
    }
    // A refused query (patients one by one): the reason next to the SQL, no table, no patient.
    let network = network(5).await;
    let researcher = Browser::login(&network, &network.pki.token()).await;
    let refused = researcher
        .post(
            "/query",
            &[("project", PROJECT), ("sql", "SELECT patient_id, count(*) AS n FROM wards GROUP BY patient_id")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(refused.body.contains("id=\"error-sql\""), "{}", refused.body);
    assert!(!refused.body.contains("<table id=\"result\">"));
    assert!(!refused.body.contains("north-1"), "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_box_puts_the_reason_next_to_the_input_and_stores_nothing() {
    let network = network(5).await;
    let researcher = Browser::login(&network, &network.pki.token()).await;
    let bad_sql =
        researcher.post("/query", &[("project", PROJECT), ("sql", "SELECT count(*) FROM no_such_table")]).await;
    assert_eq!(bad_sql.status, StatusCode::BAD_REQUEST);
    assert!(bad_sql.body.contains("id=\"error-sql\""), "{}", bad_sql.body);
    assert!(bad_sql.body.contains("no_such_table"), "the SQL stays in the box: {}", bad_sql.body);
    let bad_ccdl = researcher.post("/query", &[("project", PROJECT), ("ccdl", "{\"version\": \"2\"}")]).await;
    assert_eq!(bad_ccdl.status, StatusCode::BAD_REQUEST);
    assert!(bad_ccdl.body.contains("id=\"error-ccdl\""), "{}", bad_ccdl.body);
    let bad_id = researcher
        .post("/query", &[("project", PROJECT), ("sql", "SELECT count(*) FROM wards"), ("query_id", "a b")])
        .await;
    assert!(bad_id.body.contains("id=\"error-id\""), "{}", bad_id.body);
    let list = network.client().await.list_queries(with_token(pb::ListRequest::default(), &network.pki.token())).await;
    assert!(list.unwrap().into_inner().queries.is_empty(), "a refused submission is not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_the_views_and_forms_from_elsewhere_are_refused() {
    let network = network(5).await;
    let researcher = Browser::login(&network, &network.pki.token()).await;
    let (location, _) = researcher.run_query("SELECT ward, count(*) AS n FROM wards GROUP BY ward").await;
    let query_id = location.rsplit('/').next().unwrap().to_string();
    for path in ["/operations", "/audit", "/audit/reconcile?query_id=x"] {
        let page = researcher.get(path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
    }
    assert_eq!(researcher.post("/audit/verify", &[("log", "coordinator")]).await.status, StatusCode::FORBIDDEN);
    assert!(!researcher.get("/query").await.body.contains("href=\"/audit\""), "no link to the audit log");

    let auditor = Browser::login(&network, &network.pki.auditor_token()).await;
    let operations = auditor.get("/operations").await;
    assert_eq!(operations.status, StatusCode::OK);
    assert!(operations.body.contains("<th scope=\"row\">north</th>"), "{}", operations.body);
    let log = auditor.get("/audit").await;
    assert_eq!(log.status, StatusCode::OK);
    assert!(log.body.contains("answered"), "{}", log.body);
    let verified = auditor.post("/audit/verify", &[("log", "coordinator")]).await;
    assert!(verified.body.contains("The coordinator log is intact"), "{}", verified.body);
    let site = auditor.post("/audit/verify", &[("log", "north")]).await;
    assert!(site.body.contains("The north log is intact"), "{}", site.body);
    let reconciled = auditor.get(&format!("/audit/reconcile?query_id={query_id}")).await;
    assert!(reconciled.body.contains("The logs agree"), "{}", reconciled.body);
    assert!(reconciled.body.contains("2 site outcomes checked"), "{}", reconciled.body);

    // The auditor cannot query: no form, and a posted one is refused by the API.
    assert!(!auditor.get("/query").await.body.contains("id=\"query-form\""));
    let refused = auditor.post("/query", &[("project", PROJECT), ("sql", "SELECT count(*) FROM wards")]).await;
    assert!(refused.body.contains("cannot submit queries"), "{}", refused.body);

    // A form posted from another origin with the researcher's cookie does nothing.
    let foreign = researcher
        .send(
            researcher
                .http
                .post(format!("{}/query", researcher.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://evil.example")
                .body(format!("project={PROJECT}&sql=SELECT%20count(*)%20FROM%20wards&query_id=forged")),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(researcher.get("/queries/forged").await.status, StatusCode::NOT_FOUND);
}
