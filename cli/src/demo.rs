//! `verbund demo`: three hospitals with generated data, their nodes and a coordinator, all
//! on loopback in this process; then a handful of federated queries through the real
//! researcher API.

use crate::{OutputFormat, connect, render, status_error};
use anyhow::{Context, bail};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verbund_coordinator::{Coordinator, CoordinatorConfig};
use verbund_node::config::{DatasetConfig, NodeConfig};
use verbund_node::{LinkOptions, Node};
use verbund_proto::v1 as pb;
use verbund_synth::WrittenSite;

/// The questions the demo asks, with what each shows.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "Patients with type 2 diabetes diagnosed after 65, by sex",
        "SELECT sex, count(DISTINCT patient_id) AS patients FROM conditions \
         WHERE icd10_group = 'E11' AND age > 65 GROUP BY sex",
    ),
    (
        "HbA1c (%) by sex: mean and spread, merged exactly from per-site partial aggregates",
        "SELECT sex, count(*) AS measurements, avg(value) AS mean_hba1c, stddev_samp(value) AS sd_hba1c \
         FROM observations WHERE name = 'hba1c' GROUP BY sex",
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
        "Systolic blood pressure by age band",
        "SELECT bin_edges(age, 18, 40, 65, 120) AS age_band, avg(value) AS mean_sbp, var_samp(value) AS var_sbp \
         FROM observations WHERE name = 'systolic_bp' GROUP BY age_band",
    ),
    (
        "A fine grouping: the very old by region, sex and smoking (cells under 5 patients are withheld at each site)",
        "SELECT region, sex, smoker, count(DISTINCT patient_id) AS patients FROM patients WHERE age >= 90 GROUP BY region, sex, smoker",
    ),
    ("A row-level query is refused", "SELECT patient_id, age FROM patients WHERE age > 90"),
];

/// A node configuration for a generated site.
pub fn node_config_toml(site: &WrittenSite, coordinator: &str) -> String {
    let mut out = format!(
        "# verbund node configuration for {site}\nsite = \"{site}\"\ncoordinator = \"{coordinator}\"\n\
         # policy = \"policy.toml\"   # the built-in defaults apply when absent (min_cell_size = 5)\n",
        site = site.site
    );
    for t in &site.tables {
        let file = t.path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let columns: Vec<String> = t.columns.iter().map(|c| format!("\"{c}\"")).collect();
        out.push_str(&format!(
            "\n[[dataset]]\nname = \"{}\"\npath = \"{}\"\npatient_key = \"{}\"\ncolumns = [{}]\n",
            t.name,
            file,
            t.patient_key,
            columns.join(", ")
        ));
    }
    out
}

fn node_config(site: &WrittenSite, coordinator: &str) -> NodeConfig {
    NodeConfig {
        site: site.site.clone(),
        coordinator: coordinator.to_string(),
        proxy: None,
        policy: None,
        heartbeat_seconds: 15,
        datasets: site
            .tables
            .iter()
            .map(|t| DatasetConfig {
                name: t.name.clone(),
                path: t.path.clone(),
                format: None,
                patient_key: t.patient_key.clone(),
                columns: t.columns.clone(),
            })
            .collect(),
    }
}

pub async fn run(seed: u64, scale: f64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the demo data")?;
    println!("Generating synthetic data for three hospitals (seed {seed}, scale {scale}) ...");
    let sites = verbund_synth::write_all(dir.path(), seed, scale, verbund_synth::Format::Parquet)?;

    let node_listener = TcpListener::bind("127.0.0.1:0").await?;
    let api_listener = TcpListener::bind("127.0.0.1:0").await?;
    let node_addr = node_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::new(CoordinatorConfig::default());
    let server = tokio::spawn(coordinator.clone().serve(node_listener, api_listener, shutdown.clone()));

    let link = format!("http://{node_addr}");
    for site in &sites {
        let config = node_config(site, &link);
        let node = Arc::new(Node::from_config(&config).await?);
        let rows: usize = site.tables.len();
        println!("  node {:<18} {rows} datasets, minimum cell size 5, dialling {link}", site.site);
        tokio::spawn(node.run(LinkOptions::new(link.clone()), shutdown.child_token()));
    }
    let names: Vec<&str> = sites.iter().map(|s| s.site.as_str()).collect();
    if !coordinator.registry().wait_for(&names, Duration::from_secs(20)).await {
        bail!("the demo nodes did not connect to the coordinator within 20 s");
    }
    println!("Coordinator: sites link to {node_addr}, researchers ask at http://{api_addr}\n");

    let mut client = connect(&format!("http://{api_addr}")).await?;
    let listed = client.list_sites(pb::ListSitesRequest {}).await.map_err(status_error)?.into_inner();
    println!("{}\n", render::sites(&listed, OutputFormat::Table)?);

    for (title, sql) in QUERIES {
        println!("== {title}\n   {sql}\n");
        let request = pb::ResearchQuery { sql: sql.to_string(), ..Default::default() };
        match client.query(request).await {
            Ok(response) => println!("{}\n", render::response(&response.into_inner(), OutputFormat::Table)?),
            Err(status) => println!("refused: {}\n", status.message()),
        }
    }

    shutdown.cancel();
    server.await.context("coordinator task failed")??;
    Ok(())
}
