//! `verbund demo`: three hospitals with generated data, their nodes and a coordinator, all
//! on loopback in this process, with a generated network CA, site certificates (mutual TLS)
//! and a development token; then a handful of federated queries through the real
//! researcher API.

use crate::{OutputFormat, ResearcherConnection, authorized, connect, render, setup, status_error};
use anyhow::{Context, bail};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verbund_coordinator::{Coordinator, CoordinatorConfig};
use verbund_node::{Node, NodeConfig};
use verbund_proto::v1 as pb;

/// The questions the demo asks, with what each shows.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "Patients with type 2 diabetes diagnosed after 65, by sex",
        "SELECT sex, count(DISTINCT patient_id) AS patients FROM conditions \
         WHERE icd10_group = 'E11' AND age > 65 GROUP BY sex",
    ),
    (
        "Body-mass index by sex: mean and spread, finished at the coordinator from each site's noisy parts \
         (bounds [10, 60], one row per patient)",
        "SELECT sex, count(*) AS patients, avg(bmi) AS mean_bmi, stddev_samp(bmi) AS sd_bmi FROM patients GROUP BY sex",
    ),
    (
        "Asked again: the same numbers at no new cost (the noise is fixed per question and data, so \
         repeating a question cannot average it away)",
        "SELECT sex, count(*) AS patients, avg(bmi) AS mean_bmi, stddev_samp(bmi) AS sd_bmi FROM patients GROUP BY sex",
    ),
    (
        "Patients by age group (20-year bins)",
        "SELECT bin(age, 0, 20, 5) AS age_from, count(DISTINCT patient_id) AS patients FROM patients GROUP BY age_from",
    ),
    (
        "Adult BMI histogram (bins of 5 from 15) by sex",
        "SELECT sex, histogram(bmi, 15, 5, 6) AS bmi_15_to_45 FROM patients WHERE age >= 18 AND bmi IS NOT NULL GROUP BY sex",
    ),
    (
        "Systolic blood pressure by age band (lab values share the bounds [0, 400] of the observations' \
         value column, so these carry more noise than the BMI above)",
        "SELECT bin_edges(age, 18, 40, 65, 120) AS age_band, avg(value) AS mean_sbp, var_samp(value) AS var_sbp \
         FROM observations WHERE name = 'systolic_bp' GROUP BY age_band",
    ),
    (
        "A fine grouping: the very old by region, sex and smoking (a cell needs 5 patients, and under \
         differential privacy a noisy count above the floor's threshold, so small cells stay hidden)",
        "SELECT region, sex, smoker, count(DISTINCT patient_id) AS patients FROM patients WHERE age >= 90 GROUP BY region, sex, smoker",
    ),
    (
        "Each number needs 5 patients behind it: smoking is recorded from age 14 only, so among children \
         the smoking counts are withheld even where the group is big enough",
        "SELECT region, sex, count(*) AS patients, count(smoker) AS smoking_recorded, avg(bmi) AS mean_bmi \
         FROM patients WHERE age BETWEEN 8 AND 14 GROUP BY region, sex",
    ),
    ("A row-level query is refused", "SELECT patient_id, age FROM patients WHERE age > 90"),
    (
        "Hostile input is refused before parsing (nesting that would stall the SQL parser)",
        "SELECT count(*) FROM patients WHERE NOT (NOT (NOT (NOT (NOT (NOT (NOT (age > 3)))))))",
    ),
];

/// A model the demo fits (`verbund model`): title, family, outcome, covariates, condition.
pub struct DemoModel {
    pub title: &'static str,
    pub family: crate::model::ModelFamily,
    pub outcome: &'static str,
    pub covariates: &'static [&'static str],
    pub condition: &'static str,
}

/// The models the demo fits on the generated `patients` dataset (one row per patient; smoking
/// is recorded from age 14 only, so younger patients are not complete cases). The demo sites
/// use the research default, differential privacy, under which sites fit linear models only:
/// the logistic model shows how they say so, the linear one is fitted.
pub const MODELS: &[DemoModel] = &[
    DemoModel {
        title: "A logistic model across the sites: death by age, BMI and smoking (differentially private sites \
                fit linear models only, and say so)",
        family: crate::model::ModelFamily::Logistic,
        outcome: "deceased",
        covariates: &["age", "bmi", "smoker"],
        condition: "age >= 18",
    },
    DemoModel {
        title: "A linear model across the sites: adult BMI by age and smoking",
        family: crate::model::ModelFamily::Linear,
        outcome: "bmi",
        covariates: &["age", "smoker"],
        condition: "age >= 18",
    },
];

impl DemoModel {
    /// The `verbund model` command line that asks for this model.
    pub fn command(&self) -> String {
        let family = clap::ValueEnum::to_possible_value(&self.family).map(|v| v.get_name().to_string());
        format!(
            "verbund model --family {} --outcome {} --covariates {} --dataset patients --where \"{}\"",
            family.unwrap_or_default(),
            self.outcome,
            self.covariates.join(","),
            self.condition
        )
    }

    pub fn request(&self) -> pb::ResearchModel {
        pb::ResearchModel {
            project: setup::DEMO_PROJECT.into(),
            dataset: "patients".into(),
            outcome: self.outcome.into(),
            covariates: self
                .covariates
                .iter()
                .map(|c| pb::ModelTerm { column: c.to_string(), ..Default::default() })
                .collect(),
            family: pb::ModelFamily::from(self.family) as i32,
            condition: self.condition.into(),
            ..Default::default()
        }
    }
}

/// An MII feasibility query (CCDL), as the research data portal sends it.
pub const CCDL_EXAMPLE: &str = include_str!("../../ccdl/examples/women-with-type-2-diabetes-65-plus.json");

/// Patients with a type-2 diabetes diagnosis (ICD-10-GM E11 and its subcodes), in CCDL.
const CCDL_TYPE_2_DIABETES: &str = r#"{"version": "2", "inclusionCriteria": [[{
  "context": {"code": "Diagnose", "system": "fdpg.mii.cds", "version": "1.0.0", "display": "Diagnose"},
  "termCodes": [{"code": "E11", "system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "display": "Diabetes mellitus, Typ 2"}]}]]}"#;

/// The clinical part: the same population imported from FHIR, asked in CCDL: (title, CCDL,
/// SQL whose population the cohort is, if any).
pub const CLINICAL: &[(&str, &str, &str)] = &[
    ("An MII feasibility query (CCDL, printed above): women with type 2 diabetes, aged 65 or older", CCDL_EXAMPLE, ""),
    (
        "A cohort as the population of a SQL question: mean HbA1c (FHIR Observations, LOINC 4548-4) by the \
         patient's gender (joined from fhir_patients) among patients with a type 2 diabetes diagnosis (CCDL: \
         Diagnose E11); every lab value shares the bounds [0, 400], so the means carry much noise",
        CCDL_TYPE_2_DIABETES,
        "SELECT p.gender, count(*) AS measurements, avg(o.value) AS mean_hba1c FROM fhir_observations o \
         LEFT JOIN fhir_patients p ON o.patient_id = p.patient_id WHERE o.code = '4548-4' GROUP BY p.gender",
    ),
];

/// The demo network, up and running in this process: its files live in `dir` (removed on
/// drop), the coordinator serves until `shutdown`.
struct Network {
    dir: tempfile::TempDir,
    layout: setup::NetworkLayout,
    api_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), verbund_coordinator::Error>>,
}

impl Network {
    /// Generates the data, PKI and token, starts the coordinator and the three nodes, and
    /// waits until every node has linked.
    async fn start(seed: u64, scale: f64) -> anyhow::Result<Network> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory for the demo network")?;
        println!("Generating synthetic data for three hospitals (seed {seed}, scale {scale}),");
        println!("a network CA with certificates for the coordinator and each site, and a researcher token ...");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let layout = setup::write_network(dir.path(), seed, scale, verbund_synth::Format::Parquet, &names).await?;

        let node_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let node_addr = node_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let text = setup::coordinator_config(&layout, any_port, any_port).to_toml().map_err(anyhow::Error::msg)?;
        let config = CoordinatorConfig::from_toml(&text, dir.path()).map_err(anyhow::Error::msg)?;
        let coordinator = Coordinator::new(config).await?;
        let server = tokio::spawn(coordinator.clone().serve(node_listener, api_listener, shutdown.clone()));

        let link = format!("https://127.0.0.1:{}", node_addr.port());
        let link_url = link.parse()?;
        for (i, site) in layout.sites.iter().enumerate() {
            let path = dir.path().join(format!("{}.toml", site.site));
            setup::write_config(&path, &setup::node_config(&layout, i, &link_url).to_toml()?)?;
            let config = NodeConfig::load(&path)?;
            // The demo network is all on loopback: no proxy, whatever HTTPS_PROXY says.
            let egress = Arc::new(verbund_security::egress::Egress::direct());
            let node = Arc::new(Node::from_config(&config, egress.clone()).await?);
            println!(
                "  node {:<18} {} datasets, min cell size 5, mutual TLS to {link}",
                site.site,
                config.datasets.len()
            );
            tokio::spawn(node.run(verbund_node::link_options(&config, egress)?, shutdown.child_token()));
        }
        let site_names: Vec<&str> = layout.sites.iter().map(|s| s.site.as_str()).collect();
        if !coordinator.sites().wait_for(&site_names, Duration::from_secs(20)).await {
            shutdown.cancel();
            bail!("the demo nodes did not connect to the coordinator within 20 s");
        }
        println!("Coordinator: sites link to {node_addr}, researchers ask at https://{api_addr}\n");
        Ok(Network { dir, layout, api_addr, shutdown, server })
    }

    /// What `verbund query --coordinator` takes.
    fn api(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_addr.port())
    }

    /// Flight SQL shares the researcher API's TLS port.
    fn flight_sql(&self) -> String {
        format!("grpc+tls://127.0.0.1:{}", self.api_addr.port())
    }

    /// The web page shares the researcher API's TLS port too.
    fn web(&self) -> String {
        format!("https://127.0.0.1:{}/", self.api_addr.port())
    }

    fn info(&self) -> Info {
        Info {
            api: self.api(),
            flight_sql: self.flight_sql(),
            web: self.web(),
            ca: self.layout.ca.clone(),
            token_file: self.layout.token_file.clone(),
            auditor_token_file: self.layout.auditor_token_file.clone(),
            project: setup::DEMO_PROJECT.into(),
        }
    }

    /// Stops the nodes and the coordinator and waits for the coordinator; then the files go.
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let result = self.server.await.context("coordinator task failed")?;
        drop(self.dir);
        Ok(result?)
    }
}

/// How to reach a served demo network (`verbund demo --serve --info-file PATH`).
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// The researcher API, as `verbund query --coordinator` takes it.
    pub api: String,
    /// Arrow Flight SQL, on the researcher API's port.
    pub flight_sql: String,
    /// The web page (docs/web.md), on the researcher API's port.
    pub web: String,
    /// The CA the coordinator's certificate chains to (PEM).
    pub ca: std::path::PathBuf,
    /// The demo researcher's token (12 hours, one project).
    pub token_file: std::path::PathBuf,
    /// The demo auditor's token (role 'auditor': reads the audit logs, cannot query).
    pub auditor_token_file: std::path::PathBuf,
    pub project: String,
}

impl Info {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "api": self.api,
            "flight_sql": self.flight_sql,
            "web": self.web,
            "ca": self.ca.display().to_string(),
            "token_file": self.token_file.display().to_string(),
            "auditor_token_file": self.auditor_token_file.display().to_string(),
            "project": self.project,
        })
    }

    /// Writes the info file atomically: a reader sees no file or all of it (a temporary file
    /// beside it, then a rename).
    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(&self.to_json())?;
        text.push('\n');
        let name = path.file_name().with_context(|| format!("--info-file {} names no file", path.display()))?;
        let mut temporary = name.to_os_string();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = path.with_file_name(temporary);
        std::fs::write(&temporary, text).with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot move {} to {}", temporary.display(), path.display())
        })
    }
}

/// `verbund demo --serve`: the demo network without the scripted queries, serving until
/// `stop` (Ctrl-C or SIGTERM). Writes `info_file` (if any) once every site has linked and
/// removes it again at shutdown (the files it names go with the network).
pub async fn serve(
    seed: u64,
    scale: f64,
    info_file: Option<&std::path::Path>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let network = Network::start(seed, scale).await?;
    let info = network.info();
    if let Some(path) = info_file
        && let Err(e) = info.write(path)
    {
        network.stop().await?;
        return Err(e);
    }
    crate::print(&format!(
        "ready: api {} flight_sql {} ca {} token_file {} project {}\n\
         The web page: {} (the certificate is the demo CA's, {}: trust it or accept the browser's warning).\n\
         Log in with the researcher's token:  cat {}\n\
         or with the auditor's (audit log):   cat {}",
        info.api,
        info.flight_sql,
        info.ca.display(),
        info.token_file.display(),
        info.project,
        info.web,
        info.ca.display(),
        info.token_file.display(),
        info.auditor_token_file.display(),
    ))?;
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = network.shutdown.cancelled() => {}
    }
    println!("shutting down");
    if let Some(path) = info_file {
        let _ = std::fs::remove_file(path);
    }
    network.stop().await
}

pub async fn run(seed: u64, scale: f64) -> anyhow::Result<()> {
    let network = Network::start(seed, scale).await?;
    let layout = &network.layout;
    let connection = ResearcherConnection {
        coordinator: network.api(),
        ca: layout.ca.clone(),
        token_file: layout.token_file.clone(),
    };
    let (mut client, token) = connect(&connection).await?;
    print_sites(&mut client, &token).await?;

    for (title, sql) in QUERIES {
        println!("== {title}\n   {}\n", if sql.is_empty() { "(no SQL: how many patients)" } else { sql });
        let request =
            pb::ResearchQuery { sql: sql.to_string(), project: setup::DEMO_PROJECT.into(), ..Default::default() };
        match client.query(authorized(request, &token)?).await {
            Ok(response) => println!("{}\n", render::response(&response.into_inner(), OutputFormat::Table)?),
            Err(status) => println!("refused: {}\n", status.message()),
        }
    }
    println!("== Clinical data: each site also imported the population as FHIR (`verbund import`)\n");
    println!("{CCDL_EXAMPLE}");
    for (title, ccdl, sql) in CLINICAL {
        println!("== {title}\n   {sql}\n");
        let request = pb::ResearchQuery {
            sql: sql.to_string(),
            ccdl: ccdl.to_string(),
            project: setup::DEMO_PROJECT.into(),
            ..Default::default()
        };
        match client.query(authorized(request, &token)?).await {
            Ok(response) => println!("{}\n", render::response(&response.into_inner(), OutputFormat::Table)?),
            Err(status) => println!("refused: {}\n", status.message()),
        }
    }
    let other = pb::ResearchQuery {
        sql: "SELECT count(*) FROM patients".into(),
        project: "another-project".into(),
        ..Default::default()
    };
    println!("== A project the token does not grant is refused\n");
    if let Err(status) = client.query(authorized(other, &token)?).await {
        println!("refused ({:?}): {}\n", status.code(), status.message());
    }
    println!("== What the demo project has left of its privacy budget at each site (`verbund sites`)\n");
    print_sites(&mut client, &token).await?;

    show_audit(&connection, layout, &mut client, &token).await?;

    for model in MODELS {
        println!("== {}\n   {}\n", model.title, model.command());
        match client.model(authorized(model.request(), &token)?).await {
            Ok(response) => println!("{}\n", crate::model::render(&response.into_inner(), false)?),
            Err(status) => println!("refused: {}\n", status.message()),
        }
    }

    show_submitted(&mut client, &token).await?;
    show_flight_sql(&network, &connection, &token).await?;
    show_web(&network);
    network.stop().await
}

fn show_web(network: &Network) {
    println!(
        "== The web page\n\n\
         The coordinator serves a web page on the same TLS port: {} (docs/web.md).\n\
         Researchers see the sites and their catalogues, ask in SQL or CCDL, follow each site's\n\
         progress and get the answer as a table, a chart and CSV, with its privacy notes; auditors\n\
         read, verify and reconcile the audit logs, and operators see site health, certificates and\n\
         budgets. This demo network stops now; `cargo run -- demo --serve` keeps it running and\n\
         prints the token files to log in with.\n",
        network.web()
    );
}

/// The demo's first question again: a repeat, which dp sites answer with the same numbers at
/// no new cost (the demo spends the rest of the project's budget before this).
const LATER_SQL: &str = QUERIES[0].1;

/// A query submitted, followed and fetched later, as `verbund submit/status/result` do.
async fn show_submitted(
    client: &mut verbund_proto::v1::researcher_client::ResearcherClient<tonic::transport::Channel>,
    token: &str,
) -> anyhow::Result<()> {
    println!("== Queries that outlive a connection: submit, leave, fetch later (`verbund submit`, `status`, `result`)");
    println!("   {LATER_SQL} (asked before: no new cost)\n");
    let query = pb::ResearchQuery {
        query_id: "diabetes-by-sex".into(),
        sql: LATER_SQL.into(),
        project: setup::DEMO_PROJECT.into(),
        ..Default::default()
    };
    let submit = pb::SubmitRequest { request: Some(pb::submit_request::Request::Query(query)) };
    let submitted = client.submit(authorized(submit, token)?).await.map_err(crate::status_error)?.into_inner();
    println!("submitted: {}", crate::jobs::progress_line(&submitted));
    let mut version = submitted.version;
    loop {
        let poll = pb::StatusRequest {
            query_id: "diabetes-by-sex".into(),
            after_version: version,
            wait_ms: 5_000,
            ..Default::default()
        };
        let status = client.get_status(authorized(poll, token)?).await.map_err(crate::status_error)?.into_inner();
        println!("status:    {}", crate::jobs::progress_line(&status));
        version = status.version;
        if !matches!(status.state(), pb::QueryState::Queued | pb::QueryState::Running) {
            break;
        }
    }
    let fetch = pb::ResultRequest { query_id: "diabetes-by-sex".into(), owner: String::new() };
    let result = client.get_result(authorized(fetch, token)?).await.map_err(crate::status_error)?.into_inner();
    println!("\n{}\n", crate::jobs::render_result(&result, OutputFormat::Table)?);
    let listed =
        client.list_queries(authorized(pb::ListRequest::default(), token)?).await.map_err(crate::status_error)?;
    let queries = listed.into_inner().queries;
    println!("`verbund list`: {} queries of this session are stored, the newest:", queries.len());
    println!("{}\n", crate::jobs::list_table(&queries[..queries.len().min(3)]));
    Ok(())
}

/// The same question over Arrow Flight SQL, as ADBC, JDBC or Python ask it (docs/python.md).
async fn show_flight_sql(network: &Network, connection: &ResearcherConnection, token: &str) -> anyhow::Result<()> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use futures::TryStreamExt;
    println!("== Arrow Flight SQL on the same port ({}), as ADBC and Python ask", network.flight_sql());
    println!("   {LATER_SQL}\n");
    let tls = verbund_security::tls::researcher_client_tls(&connection.ca, None)?;
    let channel =
        tonic::transport::Endpoint::from_shared(connection.coordinator.clone())?.tls_config(tls)?.connect().await?;
    let mut flight = FlightSqlServiceClient::new(channel);
    flight.set_token(token.to_string());
    flight.set_header(verbund_coordinator::flight::PROJECT_HEADER, setup::DEMO_PROJECT);
    let info = flight.execute(LATER_SQL.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in &info.endpoint {
        let Some(ticket) = endpoint.ticket.clone() else { continue };
        let stream = flight.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    // The metadata travels on the FlightInfo's schema (and on every batch's).
    let metadata = info.clone().try_decode_schema()?.metadata().clone();
    if batches.iter().all(|b| b.num_rows() == 0) {
        println!("(no rows: every group was withheld, as in the native answer)");
    } else {
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    }
    let sites = metadata.get(verbund_coordinator::flight::SITES).map(String::as_str).unwrap_or("[]");
    let sites: Vec<serde_json::Value> = serde_json::from_str(sites).unwrap_or_default();
    let answered: Vec<String> = sites
        .iter()
        .map(|s| format!("{} {}", s["site"].as_str().unwrap_or("?"), s["status"].as_str().unwrap_or("?")))
        .collect();
    println!(
        "schema metadata: verbund.complete = {}, verbund.sites: {}",
        metadata.get(verbund_coordinator::flight::COMPLETE).map(String::as_str).unwrap_or("?"),
        answered.join(", ")
    );
    println!(
        "(the numbers equal the native answer above: a repeated question gets the same noise at no cost)\n\n\
         From Python: `verbund demo --serve --info-file demo.json`, then\n\
         `python examples/python/verbund_query.py --info demo.json \"{LATER_SQL}\"` (docs/python.md).\n"
    );
    Ok(())
}

/// The sites as the demo project sees them: state, profile, budget left, datasets.
async fn print_sites(
    client: &mut verbund_proto::v1::researcher_client::ResearcherClient<tonic::transport::Channel>,
    token: &str,
) -> anyhow::Result<()> {
    let request = authorized(pb::ListSitesRequest { project: setup::DEMO_PROJECT.into() }, token)?;
    let listed = client.list_sites(request).await.map_err(status_error)?.into_inner();
    println!("{}\n", render::sites(&listed, OutputFormat::Table)?);
    Ok(())
}

/// The audit trail as a data-protection officer sees it: the coordinator's records, a
/// site's (forwarded over its link), a verification, and a researcher who may not look.
async fn show_audit(
    connection: &ResearcherConnection,
    layout: &setup::NetworkLayout,
    client: &mut verbund_proto::v1::researcher_client::ResearcherClient<tonic::transport::Channel>,
    researcher_token: &str,
) -> anyhow::Result<()> {
    let auditor = std::fs::read_to_string(&layout.auditor_token_file)?.trim().to_string();
    let list = |site: &str, limit: u32| pb::AuditRequest {
        site: site.into(),
        action: pb::AuditAction::List as i32,
        limit,
        ..Default::default()
    };
    println!("== The audit trail: an auditor (token role 'auditor') reads the coordinator's log\n");
    let response = client.read_audit(authorized(list("", 6), &auditor)?).await.map_err(status_error)?.into_inner();
    print_entries(&response)?;
    let site = &layout.sites[0].site;
    println!("== ... and site {site}'s own log, forwarded over its link (its policy allows it)\n");
    let response = client.read_audit(authorized(list(site, 4), &auditor)?).await.map_err(status_error)?.into_inner();
    print_entries(&response)?;
    let verify = pb::AuditRequest { action: pb::AuditAction::Verify as i32, ..Default::default() };
    let verified = client.read_audit(authorized(verify, &auditor)?).await.map_err(status_error)?.into_inner();
    if let Some(v) = verified.verification {
        let state = if v.intact { "intact".to_string() } else { format!("DAMAGED: {}", v.problem) };
        println!("coordinator log verified: {} records, {} signed checkpoints: {state}\n", v.records, v.signatures);
    }
    println!("== A researcher's token cannot read the audit log\n");
    if let Err(status) = client.read_audit(authorized(list("", 6), researcher_token)?).await {
        println!("refused ({:?}): {}\n", status.code(), status.message());
    }
    println!(
        "Operators read the logs on disk with `verbund audit list|show|verify|export --log DIR`,\n\
         and reconcile coordinator and sites with `verbund audit reconcile`; auditors use\n\
         `verbund audit remote --coordinator {} --ca {} --token-file {}`.\n",
        connection.coordinator,
        connection.ca.display(),
        layout.auditor_token_file.display()
    );
    Ok(())
}

fn print_entries(response: &pb::AuditResponse) -> anyhow::Result<()> {
    let entries = response
        .entries
        .iter()
        .map(|line| verbund_audit::remote::parse_entry_json(line))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", verbund_audit::list_table(&entries));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The command line the demo prints asks for the model the demo fits.
    #[test]
    fn demo_models_are_what_their_command_lines_ask() {
        for model in MODELS {
            let command = model.command();
            let (flags, condition) = command.split_once(" --where ").unwrap();
            let mut args: Vec<&str> = flags.split(' ').collect();
            args.extend(["--where", condition.trim_matches('"'), "--project", setup::DEMO_PROJECT]);
            args.extend(["--ca", "ca.pem", "--token-file", "researcher.token"]);
            let crate::Command::Model(parsed) = crate::Cli::try_parse_from(args).unwrap().command else {
                panic!("{command} is not `verbund model`")
            };
            assert_eq!(crate::model::request(&parsed, String::new()).unwrap(), model.request(), "{command}");
        }
    }

    /// `--info-file` only means something with `--serve`.
    #[test]
    fn info_file_needs_serve() {
        let e = crate::Cli::try_parse_from(["verbund", "demo", "--info-file", "demo.json"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{e}");
        let parsed =
            crate::Cli::try_parse_from(["verbund", "demo", "--serve", "--info-file", "d.json", "--scale", "0.1"]);
        let crate::Command::Demo { serve, info_file, scale, .. } = parsed.unwrap().command else { panic!("not demo") };
        assert!(serve);
        assert_eq!(info_file.as_deref(), Some(std::path::Path::new("d.json")));
        assert_eq!(scale, 0.1);
    }

    /// The info file is the JSON the Python example reads, written whole (no temporary file
    /// left beside it) and replacing an older one.
    #[test]
    fn info_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.json");
        std::fs::write(&path, "stale").unwrap();
        let info = Info {
            api: "https://127.0.0.1:7071".into(),
            flight_sql: "grpc+tls://127.0.0.1:7071".into(),
            web: "https://127.0.0.1:7071/".into(),
            ca: "/tmp/x/pki/ca.pem".into(),
            token_file: "/tmp/x/auth/researcher.token".into(),
            auditor_token_file: "/tmp/x/auth/auditor.token".into(),
            project: setup::DEMO_PROJECT.into(),
        };
        info.write(&path).unwrap();
        let read: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            read,
            serde_json::json!({
                "api": "https://127.0.0.1:7071",
                "flight_sql": "grpc+tls://127.0.0.1:7071",
                "web": "https://127.0.0.1:7071/",
                "ca": "/tmp/x/pki/ca.pem",
                "token_file": "/tmp/x/auth/researcher.token",
                "auditor_token_file": "/tmp/x/auth/auditor.token",
                "project": "demo-study",
            })
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("demo.json")]);
        let e = info.write(&dir.path().join("missing/demo.json")).unwrap_err();
        assert!(format!("{e:#}").contains("cannot write"), "{e:#}");
    }

    /// `demo --serve`: the info file appears once the sites have linked, names a coordinator
    /// that answers the demo project with its token, and goes at shutdown, which ends cleanly.
    #[tokio::test]
    async fn serve_writes_info_answers_and_stops() {
        verbund_security::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.json");
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let (path, stop) = (path.clone(), stop.clone());
            async move { serve(7, 0.05, Some(&path), stop).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !path.exists() {
            assert!(!served.is_finished(), "serve ended before writing the info file: {:?}", served.await);
            assert!(std::time::Instant::now() < deadline, "no info file within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let api = info["api"].as_str().unwrap();
        let port = api.rsplit(':').next().unwrap();
        assert_eq!(info["flight_sql"], format!("grpc+tls://127.0.0.1:{port}"));
        assert_eq!(info["project"], setup::DEMO_PROJECT);
        let connection = ResearcherConnection {
            coordinator: api.into(),
            ca: info["ca"].as_str().unwrap().into(),
            token_file: info["token_file"].as_str().unwrap().into(),
        };
        let (mut client, token) = connect(&connection).await.unwrap();
        let request = pb::ResearchQuery {
            sql: "SELECT count(*) AS n FROM patients".into(),
            project: info["project"].as_str().unwrap().into(),
            ..Default::default()
        };
        let response = client.query(authorized(request, &token).unwrap()).await.unwrap().into_inner();
        assert_eq!(response.sites.len(), 3, "{:?}", response.sites);
        assert!(response.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered), "{:?}", response.sites);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), served).await.unwrap().unwrap().unwrap();
        assert!(!path.exists(), "the info file outlives the network");
        assert!(!std::path::Path::new(info["ca"].as_str().unwrap()).exists(), "the demo's files outlive it");
    }
}
