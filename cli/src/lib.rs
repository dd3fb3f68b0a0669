//! The command line: `node`, `coordinator`, `query`, `model`, `sites`, `generate`, `demo`, `audit`.

pub mod audit;
pub mod demo;
pub mod jobs;
pub mod model;
pub mod render;
pub mod setup;

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
use verbund_security::files::{Overwrite, write_secret};
use verbund_security::pki::{NetworkCa, Validity};

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
    /// Run the coordinator: sites connect to one address (mutual TLS), researchers to another.
    Coordinator {
        /// The coordinator's TOML configuration (listen addresses, sites, TLS, token keys).
        #[arg(long, env = "VERBUND_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Send an aggregate SQL query, a cohort (an MII CCDL feasibility query) or both (the
    /// cohort is then the SQL query's population) to the network and print the merged answer.
    /// Shows each site's progress on stderr while it waits; Ctrl-C cancels the query.
    Query(QueryArgs),
    /// Submit a query and return at once with its id: it runs at the coordinator whether or
    /// not you stay (fetch it with `status` and `result`; a model: `verbund model --submit`).
    Submit(QueryArgs),
    /// A submitted query's state and each site's progress.
    Status {
        #[command(flatten)]
        query: jobs::QueryRef,
        /// Follow it until it is finished (Ctrl-C stops watching, not the query).
        #[arg(long)]
        wait: bool,
    },
    /// A finished query's answer (kept at the coordinator for a while, see `list`).
    Result(jobs::QueryRef),
    /// Your stored queries, newest first: state, sites, when they expire.
    List {
        #[command(flatten)]
        connection: ResearcherConnection,
        /// Only this project's.
        #[arg(long, env = "VERBUND_PROJECT", default_value = "")]
        project: String,
        /// Also other members' queries of your projects (where the network shares them).
        #[arg(long)]
        all_members: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Fit a linear, logistic or Poisson model across the sites (docs/regression.md) and print
    /// it as R's summary() does, with each site's outcome: e.g. `--family logistic --outcome
    /// deceased --covariates age,bmi,smoker --dataset patients`.
    Model(model::ModelArgs),
    /// List the sites, their connection state, last-seen time, certificates and what your
    /// project may query at each (operators, with the token role "operator", see everything).
    Sites {
        #[command(flatten)]
        connection: ResearcherConnection,
        /// Show what this project may query (one your token grants); all your projects by default.
        #[arg(long, env = "VERBUND_PROJECT", default_value = "")]
        project: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Manage the network's own PKI (for networks without one).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Development tokens (a stand-in for the network's identity provider).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read, verify, export and reconcile audit logs.
    ///
    /// Works on the log directories nodes and the coordinator write, reading the files only
    /// (a running service need not stop). Exit codes: 0 all well; 1 `verify` found damage
    /// or `reconcile` found the logs disagree; 2 the command could not run.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Import FHIR R4 (Bundles, Bulk Data NDJSON, gzip) into a node's clinical datasets
    /// (Parquet, docs/fhir-datasets.md); a later import merges with what is there. Prints a
    /// summary and the node's `[[dataset]]` entries. Exit code 2 when nothing could be read.
    Import {
        /// Where the datasets go (OUT/<dataset>/current); a running node serves a new import
        /// without a restart.
        #[arg(long)]
        out: PathBuf,
        /// Memory for merging with the data already there, in MiB; beyond it the merge spills
        /// to OUT/.tmp.
        #[arg(long, default_value_t = verbund_fhir::ImportOptions::DEFAULT_MEMORY_MB)]
        memory_mb: usize,
        /// Files or directories (searched for .json, .ndjson, .json.gz, .ndjson.gz).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Write a ready-to-run demo network: data, PKI, token keys, policies and configs.
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
        /// DNS names / IP addresses put into the coordinator's certificate (repeatable).
        #[arg(long = "coordinator-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        coordinator_names: Vec<String>,
        /// The address the nodes dial.
        #[arg(long, default_value = "https://localhost:7070")]
        coordinator_url: String,
        /// Where the coordinator listens for sites.
        #[arg(long, default_value = "127.0.0.1:7070")]
        node_listen: String,
        /// Where the coordinator listens for researchers.
        #[arg(long, default_value = "127.0.0.1:7071")]
        api_listen: String,
        /// Metrics and probes address written into every configuration (none by default).
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// Start a demo network on this machine (three hospitals, generated data, mutual TLS,
    /// tokens) and run a few federated queries; or, with --serve, keep it running for other
    /// tools (Python through Arrow Flight SQL, `verbund query`) until Ctrl-C or SIGTERM.
    Demo {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Skip the scripted queries: print a `ready` line with the addresses and serve until
        /// Ctrl-C or SIGTERM.
        #[arg(long)]
        serve: bool,
        /// With --serve: write the addresses, CA, token file and project here as JSON
        /// ({"api", "flight_sql", "ca", "token_file", "project"}) once the network is up;
        /// removed again at shutdown.
        #[arg(long, requires = "serve")]
        info_file: Option<PathBuf>,
    },
}

/// What `query` and `submit` send.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub connection: ResearcherConnection,
    /// The research project the query belongs to (one your token grants).
    #[arg(long, env = "VERBUND_PROJECT")]
    pub project: String,
    /// Ask only these sites (repeatable); all connected sites by default.
    #[arg(long = "site")]
    pub sites: Vec<String>,
    /// Deadline in milliseconds (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// A CCDL (structured query) JSON file ("-": standard input): without SQL, how many
    /// patients match; with SQL, only its patients count.
    #[arg(long)]
    pub ccdl: Option<PathBuf>,
    /// The query's id (yours alone; one is made when absent).
    #[arg(long, default_value = "")]
    pub id: String,
    /// e.g. "SELECT sex, count(DISTINCT patient_id) FROM patients GROUP BY sex"
    #[arg(required_unless_present = "ccdl")]
    pub sql: Option<String>,
}

impl QueryArgs {
    fn request(&self) -> anyhow::Result<pb::SubmitRequest> {
        let ccdl = match &self.ccdl {
            Some(path) => read_ccdl(path)?,
            None => String::new(),
        };
        let query = pb::ResearchQuery {
            query_id: self.id.clone(),
            sql: self.sql.clone().unwrap_or_default(),
            sites: self.sites.clone(),
            timeout_ms: self.timeout_ms,
            project: self.project.clone(),
            ccdl,
            ..Default::default()
        };
        Ok(pb::SubmitRequest { request: Some(pb::submit_request::Request::Query(query)) })
    }
}

/// How a researcher's tool reaches the coordinator.
#[derive(Debug, clap::Args)]
pub struct ResearcherConnection {
    /// The coordinator's researcher address.
    #[arg(long, env = "VERBUND_COORDINATOR", default_value = "https://127.0.0.1:7071")]
    pub coordinator: String,
    /// CA bundle the coordinator's certificate chains to.
    #[arg(long, env = "VERBUND_CA")]
    pub ca: PathBuf,
    /// File holding the researcher's token (JWT).
    #[arg(long, env = "VERBUND_TOKEN_FILE")]
    pub token_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the network CA and the coordinator's certificate in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "verbund")]
        network: String,
        /// DNS names / IP addresses of the coordinator (repeatable).
        #[arg(long = "coordinator-name", required = true)]
        coordinator_names: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a site certificate with the CA in DIR.
    Site {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        site: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a development signing key and its JWKS document in DIR.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "dev-1")]
        kid: String,
    },
    /// Issue a development token and print it.
    Issue {
        /// The development signing key (PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "dev-1")]
        kid: String,
        #[arg(long, default_value = setup::DEV_ISSUER)]
        issuer: String,
        #[arg(long, default_value = setup::AUDIENCE)]
        audience: String,
        #[arg(long)]
        sub: String,
        /// Projects granted (repeatable).
        #[arg(long = "project", required = true)]
        projects: Vec<String>,
        /// Roles (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u64,
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
        Command::Query(_)
        | Command::Submit(_)
        | Command::Status { .. }
        | Command::Result(_)
        | Command::List { .. }
        | Command::Model(_)
        | Command::Import { .. }
        | Command::Sites { .. }
        | Command::Generate { .. }
        | Command::Pki(_)
        | Command::Token(_)
        | Command::Audit(_) => "warn",
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
    verbund_security::install_crypto();
    match cli.command {
        Command::Node { config } => run_node(config).await,
        Command::Coordinator { config } => run_coordinator(config).await,
        Command::Query(args) => {
            let request = args.request()?;
            let (mut client, token) = connect(&args.connection).await?;
            let quiet = args.format == OutputFormat::Json;
            let response = jobs::run_to_end(&mut client, &token, request, quiet).await?;
            print(&jobs::render_result(&response, args.format)?)
        }
        Command::Submit(args) => jobs::submit(&args.connection, args.request()?, args.format).await,
        Command::Status { query, wait } => jobs::status(&query, wait).await,
        Command::Result(query) => jobs::result(&query).await,
        Command::List { connection, project, all_members, limit, format } => {
            let request = pb::ListRequest { project, project_members: all_members, limit };
            jobs::list(&connection, request, format).await
        }
        Command::Model(args) => model::run(args).await,
        Command::Import { out, memory_mb, inputs } => {
            let options = verbund_fhir::ImportOptions { inputs, out: out.clone(), memory_mb, progress: true };
            let summary = verbund_fhir::import(&options).await?;
            println!("{summary}");
            println!("# The node's datasets (add them to its configuration once):\n");
            print!("{}", verbund_fhir::dataset_config(&out));
            Ok(())
        }
        Command::Sites { connection, project, format } => {
            let (mut client, token) = connect(&connection).await?;
            let request = authorized(pb::ListSitesRequest { project }, &token)?;
            let sites = client.list_sites(request).await.map_err(status_error)?.into_inner();
            print(&render::sites(&sites, format)?)
        }
        Command::Pki(PkiCommand::Init { dir, network, coordinator_names, days }) => {
            // Nothing is written unless all is new: a network keeps its CA.
            for file in ["ca.pem", "ca.key"].map(|name| dir.join(name)) {
                if file.exists() {
                    bail!(
                        "{} exists already; a network keeps its CA (use `verbund pki site` to issue more)",
                        file.display()
                    );
                }
            }
            for file in ["coordinator.pem", "coordinator.key"].map(|name| dir.join(name)) {
                if file.exists() {
                    bail!(
                        "{} exists already; move it away first, or create the network in another --dir",
                        file.display()
                    );
                }
            }
            let ca = NetworkCa::create(&network, Validity::days(days * 5))?;
            let (cert, key) = ca.write(&dir)?;
            let (ccert, ckey) = ca.issue_coordinator(&coordinator_names, Validity::days(days))?.write(
                &dir,
                "coordinator",
                Overwrite::Refuse,
            )?;
            println!("CA: {} (key {} — keep it offline)", cert.display(), key.display());
            println!("coordinator: {} {}", ccert.display(), ckey.display());
            Ok(())
        }
        Command::Pki(PkiCommand::Site { dir, site, days }) => {
            let ca = NetworkCa::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            // Re-issuing a site's certificate replaces its key.
            let (cert, key) = ca.issue_site(&site, Validity::days(days))?.write(&dir, &site, Overwrite::Replace)?;
            println!("site {site}: {} {} (give both, and ca.pem, to the site)", cert.display(), key.display());
            Ok(())
        }
        Command::Token(TokenCommand::Keygen { dir, kid }) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let issuer = verbund_security::token::DevIssuer::generate(&kid, setup::DEV_ISSUER, setup::AUDIENCE)?;
            let key = dir.join("dev-signing.key");
            write_secret(&key, issuer.key_pem.as_bytes(), Overwrite::Refuse)?;
            issuer.write_jwks(&dir.join("jwks.json"))?;
            println!("signing key {} and {}/jwks.json", key.display(), dir.display());
            Ok(())
        }
        Command::Token(TokenCommand::Issue { key, kid, issuer, audience, sub, projects, roles, ttl_minutes }) => {
            let pem = std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let dev = verbund_security::token::DevIssuer::from_key_pem(&pem, &kid, &issuer, &audience)?;
            let projects: Vec<&str> = projects.iter().map(String::as_str).collect();
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            println!("{}", dev.issue(&sub, &projects, &roles, Duration::from_secs(ttl_minutes * 60)));
            Ok(())
        }
        Command::Generate {
            out,
            seed,
            scale,
            format,
            coordinator_names,
            coordinator_url,
            node_listen,
            api_listen,
            ops_listen,
        } => {
            let format = match format {
                DataFormat::Parquet => verbund_synth::Format::Parquet,
                DataFormat::Csv => verbund_synth::Format::Csv,
            };
            let address = |flag: &str, value: &str| {
                value
                    .parse::<SocketAddr>()
                    .with_context(|| format!("{flag} '{value}' is not an address like 0.0.0.0:7070"))
            };
            let node_listen = address("--node-listen", &node_listen)?;
            let api_listen = address("--api-listen", &api_listen)?;
            let ops_listen = ops_listen.as_deref().map(|o| address("--ops-listen", o)).transpose()?;
            let coordinator_url = verbund_security::settings::parse_url("--coordinator-url", &coordinator_url)
                .map_err(anyhow::Error::msg)?;
            if coordinator_url.scheme_str() != Some("https") {
                bail!("--coordinator-url must start with https:// (verbund never speaks in clear text)");
            }
            let layout = setup::write_network(&out, seed, scale, format, &coordinator_names).await?;
            let mut coordinator = setup::coordinator_config(&layout, node_listen, api_listen);
            coordinator.ops_listen = ops_listen;
            let path = out.join("coordinator.toml");
            setup::write_config(&path, &coordinator.to_toml().map_err(anyhow::Error::msg)?)?;
            println!("coordinator config: {}", path.display());
            for (i, site) in layout.sites.iter().enumerate() {
                let mut node = setup::node_config(&layout, i, &coordinator_url);
                node.ops_listen = ops_listen;
                let path = out.join(format!("{}.toml", site.site));
                setup::write_config(&path, &node.to_toml()?)?;
                println!("node config for {}: {}", site.site, path.display());
            }
            println!("researcher token: {} (project {})", layout.token_file.display(), setup::DEMO_PROJECT);
            println!("CA for researchers: {}", layout.ca.display());
            Ok(())
        }
        Command::Demo { seed, scale, serve: false, .. } => demo::run(seed, scale).await,
        Command::Demo { seed, scale, serve: true, info_file } => {
            let stop = CancellationToken::new();
            tokio::spawn(shutdown_signal(stop.clone()));
            demo::serve(seed, scale, info_file.as_deref(), stop).await
        }
        Command::Audit(audit::AuditCommand::Remote { connection, site, verify, select, format }) => {
            audit::remote(&connection, site, verify, &select, format).await
        }
        Command::Audit(command) => audit::run(command),
    }
}

/// The process exit code for an error `run` returned: what an audit command asks for
/// ([`audit::AuditExit::code`]: 1 found a problem, 2 could not run), 1 for the rest.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    // An import that could read nothing at all: 2, so a nightly job tells it from issues.
    if matches!(error.downcast_ref::<verbund_fhir::ImportError>(), Some(verbund_fhir::ImportError::NoInput { .. })) {
        return 2;
    }
    error.downcast_ref::<audit::AuditExit>().map_or(1, audit::AuditExit::code)
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

/// A CCDL document from a file or, for "-", standard input.
pub(crate) fn read_ccdl(path: &std::path::Path) -> anyhow::Result<String> {
    if path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading CCDL from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading the CCDL file {}", path.display()))
}

async fn run_node(config_path: PathBuf) -> anyhow::Result<()> {
    let config = NodeConfig::load(&config_path)?;
    // One way out for the link and the key fetch alike, logged once here.
    let egress = verbund_node::egress(&config)?;
    let options = verbund_node::link_options(&config, egress.clone())?;
    let node = Arc::new(Node::from_config(&config, egress).await?);
    let coordinator = verbund_security::settings::url_text(&config.coordinator);
    tracing::info!(site = %node.site(), %coordinator, datasets = config.datasets.len(), "node started");
    let shutdown = CancellationToken::new();
    // The probes outlive the drain, so they can report it.
    let ops_stop = CancellationToken::new();
    let _stop_ops = ops_stop.clone().drop_guard();
    if let Some(address) = config.ops_listen {
        let ready = node.clone();
        verbund_ops::spawn(address, node.metrics_registry(), Arc::new(move || ready.readiness()), ops_stop.clone())
            .await?;
    }
    tokio::spawn(shutdown_signal(shutdown.clone()));
    #[cfg(unix)]
    {
        // SIGHUP (systemctl reload): look at the certificate files now, not at the next poll.
        let node = node.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        node.check_tls_files();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; certificate files are still polled"),
        }
    }
    node.clone().run(options, shutdown).await;
    // A signed checkpoint at the end of the log, so that its last records are vouched for.
    if let Some(audit) = node.audit() {
        audit.log().close().await.context("closing the audit log")?;
    }
    Ok(())
}

async fn run_coordinator(config_path: PathBuf) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&config_path).map_err(anyhow::Error::msg)?;
    let (node_listen, api_listen) = (config.node_listen, config.api_listen);
    let node_listener =
        TcpListener::bind(node_listen).await.with_context(|| format!("cannot listen for sites on {node_listen}"))?;
    let api_listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("cannot listen for researchers on {api_listen}"))?;
    let ops_listen = config.ops_listen;
    let coordinator = Coordinator::new(config).await?;
    tracing::info!(%node_listen, %api_listen, "coordinator started");
    let shutdown = CancellationToken::new();
    let ops_stop = CancellationToken::new();
    let _stop_ops = ops_stop.clone().drop_guard();
    if let Some(address) = ops_listen {
        let ready = coordinator.clone();
        let registry = coordinator.metrics_registry();
        verbund_ops::spawn(address, registry, Arc::new(move || ready.readiness()), ops_stop.clone()).await?;
    }
    tokio::spawn(shutdown_signal(shutdown.clone()));
    coordinator.clone().serve(node_listener, api_listener, shutdown).await?;
    if let Some(audit) = coordinator.audit() {
        audit.log().close().await.context("closing the audit log")?;
    }
    Ok(())
}

/// Connects to the coordinator's researcher API over TLS and reads the token file.
pub async fn connect(
    c: &ResearcherConnection,
) -> anyhow::Result<(ResearcherClient<tonic::transport::Channel>, String)> {
    let token = std::fs::read_to_string(&c.token_file)
        .with_context(|| format!("cannot read the token file {}", c.token_file.display()))?
        .trim()
        .to_string();
    let client = connect_with(&c.coordinator, &c.ca).await?;
    Ok((client, token))
}

pub async fn connect_with(
    address: &str,
    ca: &std::path::Path,
) -> anyhow::Result<ResearcherClient<tonic::transport::Channel>> {
    if !address.starts_with("https://") {
        bail!("the coordinator address must start with https:// (verbund never speaks in clear text)");
    }
    let tls = verbund_security::tls::researcher_client_tls(ca, None)?;
    let channel =
        tonic::transport::Endpoint::from_shared(address.to_string())?.tls_config(tls)?.connect().await.with_context(
            || format!("cannot reach the coordinator at {address}; is it running, and is {} its CA?", ca.display()),
        )?;
    Ok(ResearcherClient::new(channel).max_decoding_message_size(verbund_proto::MAX_MESSAGE_BYTES))
}

/// A request carrying the researcher's token.
pub fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().context("the token contains characters not allowed in a header")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Prints to stdout; a closed pipe (`verbund query ... | head`) ends the output quietly.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A gRPC error as the researcher should read it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

#[cfg(test)]
mod deploy_examples {
    use std::path::Path;

    /// The commented examples in deploy/examples must load with the real loaders.
    #[test]
    fn example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let node = verbund_node::NodeConfig::load(&dir.join("node.toml")).unwrap();
        assert_eq!(node.site, "uniklinik-nord");
        assert!(!node.datasets.is_empty() && node.ops_listen.is_some());
        let egress = node.egress_with_env(|_| None).unwrap();
        assert_eq!(egress.proxy_for(&node.coordinator), Some("http://proxy.uniklinik-nord.example:3128"));
        assert!(verbund_node::link_options(&node, std::sync::Arc::new(egress)).is_ok());
        let coordinator = verbund_coordinator::CoordinatorConfig::load(&dir.join("coordinator.toml")).unwrap();
        assert!(!coordinator.sites.is_empty() && coordinator.ops_listen.is_some());
    }
}

#[cfg(all(test, unix))]
mod secret_files {
    use super::{Cli, run};
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    async fn verbund(args: &[&str]) -> anyhow::Result<()> {
        run(Cli::try_parse_from(std::iter::once("verbund").chain(args.iter().copied()))?).await
    }

    /// Every file under `dir`.
    fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() { found.extend(files(&path)?) } else { found.push(path) }
        }
        Ok(found)
    }

    /// Every key and token that `generate`, `pki init`, `pki site` and `token keygen` write is
    /// readable by its owner only; none of them replaces a key it should not.
    #[tokio::test]
    async fn keys_and_tokens_are_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p).display().to_string();
        let (net, pki, auth) = (path("net"), path("pki"), path("auth"));
        verbund(&["generate", "--out", &net, "--scale", "0.01", "--format", "csv"]).await.unwrap();
        verbund(&["pki", "init", "--dir", &pki, "--coordinator-name", "localhost"]).await.unwrap();
        verbund(&["pki", "site", "--dir", &pki, "--site", "uniklinik-nord"]).await.unwrap();
        let key = dir.path().join("pki/uniklinik-nord.key");
        let first = std::fs::read(&key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        verbund(&["pki", "site", "--dir", &pki, "--site", "uniklinik-nord"]).await.unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), first, "re-issuing a site's certificate replaces its key");
        verbund(&["token", "keygen", "--dir", &auth]).await.unwrap();

        let secrets: Vec<PathBuf> = files(dir.path())
            .unwrap()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "key" || e == "token"))
            .collect();
        // generate: CA, coordinator, 3 sites, 3 noise keys, dev signing key, researcher and
        // auditor tokens; pki: CA, coordinator, a site; token keygen: a signing key.
        assert_eq!(secrets.len(), 15, "{secrets:?}");
        assert!(secrets.contains(&dir.path().join("net/privacy/uniklinik-nord-noise.key")));
        assert!(secrets.contains(&dir.path().join("net/auth/researcher.token")));
        assert!(secrets.contains(&dir.path().join("net/auth/auditor.token")));
        for file in &secrets {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
        }

        let ca_key = std::fs::read(dir.path().join("pki/ca.key")).unwrap();
        std::fs::remove_file(dir.path().join("pki/ca.pem")).unwrap();
        let e = verbund(&["pki", "init", "--dir", &pki, "--coordinator-name", "localhost"]).await.unwrap_err();
        assert!(e.to_string().contains("ca.key exists already"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("pki/ca.key")).unwrap(), ca_key, "pki init never replaces ca.key");
        let e = verbund(&["token", "keygen", "--dir", &auth]).await.unwrap_err().to_string();
        assert!(e.contains("dev-signing.key exists already"), "{e}");
        let e = verbund(&["generate", "--out", &net, "--scale", "0.01", "--format", "csv"]).await.unwrap_err();
        assert!(e.to_string().contains("holds a network already"), "{e}");
    }
}
