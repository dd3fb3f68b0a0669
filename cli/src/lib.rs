//! The command line: `node`, `coordinator`, `query`, `sites`, `generate`, `demo`.

pub mod demo;
pub mod render;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verbund_coordinator::{Coordinator, CoordinatorConfig};
use verbund_node::{Node, NodeConfig};
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_client::ResearcherClient;

#[derive(Debug, Parser)]
#[command(name = "verbund", version, about = "A federated health-data network: questions travel, data stays.")]
pub struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true, env = "VERBUND_JSON_LOGS")]
    pub json_logs: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a site node beside local data; it dials out to the coordinator.
    Node {
        /// The node's TOML configuration (site, coordinator, policy, datasets).
        #[arg(long, env = "VERBUND_NODE_CONFIG")]
        config: PathBuf,
    },
    /// Run the coordinator: sites connect to one address, researchers to another.
    Coordinator {
        /// Where sites connect (their outbound link).
        #[arg(long, env = "VERBUND_NODE_LISTEN", default_value = "0.0.0.0:7070")]
        node_listen: SocketAddr,
        /// Where researchers connect.
        #[arg(long, env = "VERBUND_API_LISTEN", default_value = "127.0.0.1:7071")]
        api_listen: SocketAddr,
        /// Deadline of a query that names none, in seconds.
        #[arg(long, env = "VERBUND_DEFAULT_TIMEOUT", default_value_t = 30)]
        default_timeout: u64,
    },
    /// Send an aggregate SQL query to the network and print the merged answer.
    Query {
        /// The coordinator's researcher address.
        #[arg(long, env = "VERBUND_COORDINATOR", default_value = "http://127.0.0.1:7071")]
        coordinator: String,
        /// Ask only these sites (repeatable); all connected sites by default.
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Deadline in milliseconds (0: the coordinator's default).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u32,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// e.g. "SELECT sex, count(DISTINCT patient_id) FROM patients GROUP BY sex"
        sql: String,
    },
    /// List the sites, their connection state, last-seen time and catalogues.
    Sites {
        #[arg(long, env = "VERBUND_COORDINATOR", default_value = "http://127.0.0.1:7071")]
        coordinator: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Write deterministic synthetic data (and node configs) for the three demo hospitals.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Multiplies the number of patients (1.0: 6000 + 3000 + 1500).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, value_enum, default_value_t = DataFormat::Parquet)]
        format: DataFormat,
        /// The coordinator address written into the generated node configs.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        coordinator: String,
    },
    /// Start a demo network on this machine (three hospitals, generated data) and run a few
    /// federated queries.
    Demo {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    Parquet,
    Csv,
}

pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // Commands that print results keep their logs quiet unless asked for (RUST_LOG).
    let default = match cli.command {
        Command::Demo { .. } => "error",
        Command::Query { .. } | Command::Sites { .. } | Command::Generate { .. } => "warn",
        Command::Node { .. } | Command::Coordinator { .. } => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node { config } => run_node(config).await,
        Command::Coordinator { node_listen, api_listen, default_timeout } => {
            run_coordinator(node_listen, api_listen, default_timeout).await
        }
        Command::Query { coordinator, sites, timeout_ms, format, sql } => {
            let mut client = connect(&coordinator).await?;
            let request = pb::ResearchQuery { query_id: String::new(), sql, sites, timeout_ms };
            let response = client.query(request).await.map_err(status_error)?.into_inner();
            println!("{}", render::response(&response, format)?);
            Ok(())
        }
        Command::Sites { coordinator, format } => {
            let mut client = connect(&coordinator).await?;
            let sites = client.list_sites(pb::ListSitesRequest {}).await.map_err(status_error)?.into_inner();
            println!("{}", render::sites(&sites, format)?);
            Ok(())
        }
        Command::Generate { out, seed, scale, format, coordinator } => {
            let format = match format {
                DataFormat::Parquet => verbund_synth::Format::Parquet,
                DataFormat::Csv => verbund_synth::Format::Csv,
            };
            let sites = verbund_synth::write_all(&out, seed, scale, format)?;
            for site in &sites {
                let path = out.join(&site.site).join("node.toml");
                std::fs::write(&path, demo::node_config_toml(site, &coordinator))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("{}: {} tables, config {}", site.site, site.tables.len(), path.display());
            }
            Ok(())
        }
        Command::Demo { seed, scale } => demo::run(seed, scale).await,
    }
}

/// Ends on Ctrl-C or SIGTERM.
async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

async fn run_node(config_path: PathBuf) -> anyhow::Result<()> {
    let config = NodeConfig::load(&config_path)?;
    let options = verbund_node::link_options(&config)?;
    let node = Arc::new(Node::from_config(&config).await?);
    tracing::info!(site = %node.site(), coordinator = %config.coordinator, datasets = config.datasets.len(), "node started");
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    node.run(options, shutdown).await;
    Ok(())
}

async fn run_coordinator(node_listen: SocketAddr, api_listen: SocketAddr, default_timeout: u64) -> anyhow::Result<()> {
    if default_timeout == 0 {
        bail!("--default-timeout must be at least 1 second");
    }
    let node_listener =
        TcpListener::bind(node_listen).await.with_context(|| format!("cannot listen for sites on {node_listen}"))?;
    let api_listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("cannot listen for researchers on {api_listen}"))?;
    let config = CoordinatorConfig { default_timeout: Duration::from_secs(default_timeout), ..Default::default() };
    let coordinator = Coordinator::new(config);
    tracing::info!(%node_listen, %api_listen, "coordinator started");
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    coordinator.serve(node_listener, api_listener, shutdown).await?;
    Ok(())
}

pub async fn connect(address: &str) -> anyhow::Result<ResearcherClient<tonic::transport::Channel>> {
    let client = ResearcherClient::connect(address.to_string())
        .await
        .with_context(|| format!("cannot reach the coordinator at {address}; is it running?"))?;
    Ok(client.max_decoding_message_size(64 * 1024 * 1024))
}

/// A gRPC error as the researcher should read it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
