//! Test harness: a real coordinator and real nodes in-process on 127.0.0.1:0, synthetic
//! sites, a pooled reference over the same data, and helpers to compare answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod compare;
pub mod models;
pub mod proxy;
pub mod slow;

use anyhow::Context;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verbund_coordinator::{Coordinator, CoordinatorConfig};
use verbund_node::{Catalogue, LinkOptions, Node};
use verbund_policies::Policy;
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_client::ResearcherClient;
use verbund_security::files::Overwrite;
use verbund_security::pki::{NetworkCa, Validity};
use verbund_security::tls::TlsFiles;
use verbund_security::token::{DevIssuer, TokenConfig, Verifier};

/// The project every test researcher works in, and every test policy allows.
pub const PROJECT: &str = "study";

/// A policy with minimum cell size `k` that lets [`PROJECT`] ask anything.
pub fn open_policy(k: u32) -> Policy {
    Policy::with_min_cell_size(k).unwrap().allowing(PROJECT)
}

/// A network's PKI and identity provider, generated at test time.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: NetworkCa,
    pub ca_path: std::path::PathBuf,
    pub coordinator: TlsFiles,
    pub issuer: DevIssuer,
    pub auth: TokenConfig,
}

impl Pki {
    pub fn new() -> Self {
        verbund_security::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = NetworkCa::create("test", Validity::days(30)).unwrap();
        let (ca_path, _) = ca.write(dir.path()).unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = ca
            .issue_coordinator(&names, Validity::days(10))
            .unwrap()
            .write(dir.path(), "coordinator", Overwrite::Refuse)
            .unwrap();
        let issuer = DevIssuer::generate("test-key", "https://idp.test", "verbund").unwrap();
        let auth = issuer.write_jwks(&dir.path().join("jwks.json")).unwrap();
        Self { coordinator: TlsFiles { ca: ca_path.clone(), cert, key }, dir, ca, ca_path, issuer, auth }
    }

    /// Issues (or re-issues) a site certificate.
    pub fn site(&self, site: &str) -> TlsFiles {
        self.site_with(site, Validity::days(10))
    }

    pub fn site_with(&self, site: &str, validity: Validity) -> TlsFiles {
        let (cert, key) =
            self.ca.issue_site(site, validity).unwrap().write(self.dir.path(), site, Overwrite::Replace).unwrap();
        TlsFiles { ca: self.ca_path.clone(), cert, key }
    }

    pub fn verifier(&self) -> Arc<Verifier> {
        Arc::new(Verifier::load(&self.auth).unwrap())
    }

    /// A valid token for the test researcher in [`PROJECT`].
    pub fn token(&self) -> String {
        self.issuer.issue("alice", &[PROJECT], &["researcher"], Duration::from_secs(3600))
    }

    /// A valid token for the test auditor (role `auditor`, no project).
    pub fn auditor_token(&self) -> String {
        self.issuer.issue("dora-dpo", &[], &["auditor"], Duration::from_secs(3600))
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A node (or coordinator) running on a runtime of its own, so that killing it closes its
/// sockets the way a crashed process would, while `shutdown` stops it the way SIGTERM does.
pub struct NodeProcess {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown: CancellationToken,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl NodeProcess {
    pub fn start(node: impl Into<Arc<Node>>, options: LinkOptions) -> Self {
        let node = node.into();
        let shutdown = CancellationToken::new();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let (stop, done) = (shutdown.clone(), finished.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.spawn(async move {
                node.run(options, stop).await;
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            // Block this thread until killed; the runtime keeps serving meanwhile.
            let _ = killed.recv();
            // Dropping the runtime drops every task and socket at once: no goodbye.
            runtime.shutdown_timeout(Duration::from_millis(0));
        });
        Self { kill: Some(kill), thread: Some(thread), shutdown, finished }
    }

    /// Kills the node abruptly.
    pub fn kill(mut self) {
        self.stop();
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether the node's (or coordinator's) main task has returned.
    pub fn finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn stop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Network {
    pub pki: Pki,
    pub coordinator: Arc<Coordinator>,
    /// The node-link address, e.g. https://127.0.0.1:40000
    pub link: String,
    /// The researcher API address.
    pub api: String,
    pub nodes: HashMap<String, NodeProcess>,
    config: CoordinatorConfig,
    server: Option<NodeProcess>,
}

/// Where a coordinator listens.
enum Listeners {
    /// Listeners bound once, by the caller, and handed over as they are (no port is released
    /// and bound again, so no other test can take it in between).
    Bound { node: std::net::TcpListener, api: std::net::TcpListener },
    /// Bind the configured addresses again (after a restart: the old process's ports).
    Rebind,
}

/// Runs a coordinator on a runtime of its own (so that stopping it drops every connection,
/// as a crashed or restarted process would).
async fn start_coordinator(config: CoordinatorConfig, listeners: Listeners) -> (Arc<Coordinator>, NodeProcess) {
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop, done) = (shutdown.clone(), finished.clone());
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let shutdown = stop;
        let coordinator = runtime.block_on(async {
            let (node_listener, api_listener) = match listeners {
                Listeners::Bound { node, api } => {
                    // Registered with this runtime's reactor, which serves them from now on.
                    let adopt = |listener: std::net::TcpListener| {
                        listener.set_nonblocking(true).unwrap();
                        TcpListener::from_std(listener).unwrap()
                    };
                    (adopt(node), adopt(api))
                }
                Listeners::Rebind => {
                    // The old process's port may take a moment to be free again.
                    let mut tries = 0;
                    loop {
                        match (TcpListener::bind(config.node_listen).await, TcpListener::bind(config.api_listen).await)
                        {
                            (Ok(n), Ok(a)) => break (n, a),
                            _ if tries < 100 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            (n, a) => panic!("cannot bind: {:?} {:?}", n.err(), a.err()),
                        }
                    }
                }
            };
            let coordinator = Coordinator::new(config).await.unwrap();
            let serve = coordinator.clone().serve(node_listener, api_listener, shutdown.clone());
            tokio::spawn(async move {
                serve.await.unwrap();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            // Serving starts with the spawned task; wait until it says so.
            while coordinator.readiness().is_err() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            coordinator
        });
        let _ = ready_tx.send(coordinator);
        let _ = killed.recv();
        runtime.shutdown_timeout(Duration::from_millis(0));
    });
    let coordinator = ready_rx.await.unwrap();
    (coordinator, NodeProcess { kill: Some(kill), thread: Some(thread), shutdown, finished })
}

impl Network {
    /// A coordinator (mutual TLS, tokens) that accepts the named sites.
    pub async fn start(sites: &[&str]) -> Self {
        Self::start_with_rules(sites, Default::default()).await
    }

    /// Like [`Network::start`], with the coordinator's network-level rules and quotas.
    pub async fn start_with_rules(sites: &[&str], network: verbund_coordinator::config::NetworkRules) -> Self {
        Self::start_with(sites, network, Default::default()).await
    }

    /// Like [`Network::start_with_rules`], with the coordinator's settings for model fits.
    pub async fn start_with(
        sites: &[&str],
        network: verbund_coordinator::config::NetworkRules,
        regression: verbund_coordinator::config::ModelSettings,
    ) -> Self {
        let pki = Pki::new();
        // The coordinator's two loopback listeners, bound here once and kept: the coordinator
        // serves on these very sockets.
        let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (node_listen, api_listen) = (node.local_addr().unwrap(), api.local_addr().unwrap());
        let config = CoordinatorConfig {
            node_listen,
            api_listen,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            tls_reload: Duration::from_millis(200),
            tls: pki.coordinator.clone(),
            auth: pki.auth.clone(),
            ops_listen: None,
            drain: Duration::from_secs(5),
            audit: verbund_audit::AuditSettings::in_dir(&pki.dir.path().join("audit/coordinator")),
            network,
            regression,
        };
        let (coordinator, server) = start_coordinator(config.clone(), Listeners::Bound { node, api }).await;
        Self {
            pki,
            coordinator,
            link: format!("https://{node_listen}"),
            api: format!("https://{api_listen}"),
            nodes: HashMap::new(),
            config,
            server: Some(server),
        }
    }

    /// Stops the coordinator abruptly and starts a new one on the same addresses.
    pub async fn restart_coordinator(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
        // The old process's audit log may still be closing: the new one keeps its own.
        let mut config = self.config.clone();
        let fresh = format!("audit/coordinator-{}", unique());
        config.audit = verbund_audit::AuditSettings::in_dir(&self.pki.dir.path().join(fresh));
        let (coordinator, server) = start_coordinator(config, Listeners::Rebind).await;
        self.coordinator = coordinator;
        self.server = Some(server);
    }

    /// The coordinator's process: [`NodeProcess::shutdown`] stops it gracefully.
    pub fn coordinator_process(&self) -> &NodeProcess {
        self.server.as_ref().expect("the coordinator runs")
    }

    /// A node of this network (its verifier trusts this network's identity provider), with
    /// an audit log, a noise key and a budget ledger of its own in the PKI's directory, as
    /// every node has.
    pub fn node(&self, site: &str, catalogue: Catalogue, policy: Policy) -> Node {
        let n = unique();
        let privacy = self.privacy(&format!("{site}-{n}"));
        self.node_with_privacy(site, catalogue, policy, privacy)
    }

    fn node_with_privacy(
        &self,
        site: &str,
        catalogue: Catalogue,
        policy: Policy,
        privacy: verbund_node::private::Privacy,
    ) -> Node {
        let n = unique();
        let settings = verbund_audit::AuditSettings::in_dir(&self.pki.dir.path().join(format!("audit/{site}-{n}")));
        let node = Node::new(site, catalogue, policy, self.pki.verifier());
        let hook = node.audit_metrics().on_commit();
        let log = settings.open(Some(hook)).expect("a test audit log");
        node.with_audit(Arc::new(log), Some("127.0.0.1".into())).with_privacy(privacy)
    }

    /// A fresh noise key and budget ledger in the PKI's directory, as every node has.
    pub fn privacy(&self, name: &str) -> verbund_node::private::Privacy {
        let dir = self.pki.dir.path().join("privacy");
        std::fs::create_dir_all(&dir).expect("privacy directory");
        let key = dir.join(format!("{name}.key"));
        verbund_node::private::write_noise_key(&key).expect("a noise key");
        verbund_node::private::Privacy::load(&key, &dir.join(format!("{name}.redb"))).expect("privacy state")
    }

    /// A node like [`Network::node`] whose noise key is fixed (`key` repeated), so that its
    /// noisy answers are the same in every run: tests of noise cannot flake.
    pub fn node_with_noise_key(&self, site: &str, catalogue: Catalogue, policy: Policy, key: u8) -> Node {
        let dir = self.pki.dir.path().join("privacy");
        std::fs::create_dir_all(&dir).expect("privacy directory");
        let ledger = dir.join(format!("{site}-{}.redb", unique()));
        let privacy = verbund_node::private::Privacy {
            key: verbund_policies::noise::NoiseKey::from_bytes(&[key; 32]).expect("a noise key"),
            ledger: Arc::new(verbund_ledger::Ledger::open(&ledger).expect("a ledger")),
        };
        self.node_with_privacy(site, catalogue, policy, privacy)
    }

    /// Link options for a site: its certificate, quick heartbeats, redials and TLS checks.
    pub fn link_options(&self, site: &str) -> LinkOptions {
        let mut o = LinkOptions::new(self.link.clone(), self.pki.site(site), "127.0.0.1");
        o.heartbeat = Duration::from_millis(500);
        o.tls_reload = Duration::from_millis(200);
        o.data_reload = Duration::from_millis(200);
        o.backoff_min = Duration::from_millis(50);
        o.backoff_max = Duration::from_millis(500);
        o
    }

    /// Starts a node and waits until the coordinator sees it connected.
    pub async fn add_node(&mut self, node: impl Into<Arc<Node>>) {
        let node = node.into();
        let options = self.link_options(node.site());
        self.add_node_with(node, options).await;
    }

    pub async fn add_node_with(&mut self, node: impl Into<Arc<Node>>, options: LinkOptions) {
        let node = node.into();
        let site = node.site().to_string();
        let process = NodeProcess::start(node, options);
        self.nodes.insert(site.clone(), process);
        assert!(
            self.coordinator.sites().wait_for(&[site.as_str()], Duration::from_secs(10)).await,
            "site {site} did not connect"
        );
    }

    pub fn kill(&mut self, site: &str) {
        if let Some(p) = self.nodes.remove(site) {
            p.kill();
        }
    }

    /// Starts a researcher's query in the background, as the CLI would.
    pub async fn spawn_query(
        &self,
        request: pb::ResearchQuery,
    ) -> tokio::task::JoinHandle<Result<tonic::Response<pb::QueryResponse>, tonic::Status>> {
        let mut client = self.client().await;
        let mut request = request;
        if request.project.is_empty() {
            request.project = PROJECT.into();
        }
        let request = with_token(request, &self.pki.token());
        tokio::spawn(async move { client.query(request).await })
    }

    /// A researcher's client over TLS (the token goes with each request; see [`with_token`]).
    pub async fn client(&self) -> ResearcherClient<tonic::transport::Channel> {
        researcher_client(&self.api, &self.pki.ca_path).await
    }

    /// A Flight SQL client on the researcher API (same TLS channel as [`Network::client`]),
    /// with the test researcher's token.
    pub async fn flight_client(&self) -> FlightSqlServiceClient<tonic::transport::Channel> {
        let mut client = self.flight_client_without_token().await;
        client.set_token(self.pki.token());
        client
    }

    /// A Flight SQL client on the researcher API that sends no token.
    pub async fn flight_client_without_token(&self) -> FlightSqlServiceClient<tonic::transport::Channel> {
        let tls = verbund_security::tls::researcher_client_tls(&self.pki.ca_path, Some("127.0.0.1")).unwrap();
        FlightSqlServiceClient::new(tls_channel(&self.api, tls).await)
    }

    /// The sites as the test researcher sees them.
    pub async fn list_sites(&self) -> pb::ListSitesResponse {
        let request = with_token(pb::ListSitesRequest::default(), &self.pki.token());
        self.client().await.list_sites(request).await.unwrap().into_inner()
    }

    /// Runs a query in [`PROJECT`] with a valid token; returns the merged table and the response.
    pub async fn query(&self, sql: &str) -> Result<(RecordBatch, pb::QueryResponse), tonic::Status> {
        self.query_with(pb::ResearchQuery { sql: sql.into(), ..Default::default() }).await
    }

    /// Runs a query with a valid token (in [`PROJECT`] unless the request names a project).
    pub async fn query_with(
        &self,
        mut request: pb::ResearchQuery,
    ) -> Result<(RecordBatch, pb::QueryResponse), tonic::Status> {
        if request.project.is_empty() {
            request.project = PROJECT.into();
        }
        let response = self.client().await.query(with_token(request, &self.pki.token())).await?.into_inner();
        Ok((decode(&response.arrow_ipc).unwrap(), response))
    }
}

impl Network {
    /// Fits a model with a valid token (in [`PROJECT`] unless the request names a project).
    pub async fn model(&self, mut request: pb::ResearchModel) -> Result<pb::ModelResponse, tonic::Status> {
        if request.project.is_empty() {
            request.project = PROJECT.into();
        }
        Ok(self.client().await.model(with_token(request, &self.pki.token())).await?.into_inner())
    }
}

/// Polls `check` until it holds; panics after `timeout`, naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn researcher_client(api: &str, ca: &std::path::Path) -> ResearcherClient<tonic::transport::Channel> {
    let tls = verbund_security::tls::researcher_client_tls(ca, Some("127.0.0.1")).unwrap();
    ResearcherClient::new(tls_channel(api, tls).await)
}

/// A connected channel to `address` with the given TLS settings.
pub async fn tls_channel(address: &str, tls: tonic::transport::ClientTlsConfig) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(address.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A name no other call in this process gets.
fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A catalogue of one in-memory dataset keyed by `patient_id`, exposing `columns`: the site
/// data of tests that need exact control over every row.
pub fn memory_catalogue(dataset: &str, batches: Vec<RecordBatch>, columns: &[&str]) -> Catalogue {
    let Some(schema) = batches.first().map(|b| b.schema()) else { panic!("{dataset}: no batches") };
    let table = MemTable::try_new(schema, vec![batches]).expect("batches of one schema");
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut catalogue = Catalogue::new();
    catalogue.add_table(dataset, Arc::new(table), "patient_id", &columns).expect("a valid test dataset");
    catalogue
}

/// Serves `body` over HTTPS (HTTP/1.1) on loopback, as an identity provider's JWKS endpoint.
pub async fn serve_jwks(files: &TlsFiles, body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (config, _) = verbund_security::tls::server_config(files, verbund_security::tls::ClientAuth::None).unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols.clear();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/realms/verbund/protocol/openid-connect/certs",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

/// A request with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

impl Drop for Network {
    fn drop(&mut self) {
        self.nodes.clear();
        self.server.take();
    }
}

pub fn decode(ipc: &[u8]) -> anyhow::Result<RecordBatch> {
    let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
}

pub fn status<'a>(response: &'a pb::QueryResponse, site: &str) -> &'a pb::SiteStatus {
    response.sites.iter().find(|s| s.site == site).unwrap_or_else(|| panic!("no status for {site}"))
}

/// Generated demo data written to disk, one node per site (the last site as CSV, the
/// others as Parquet, so both readers are exercised), plus the pooled reference.
pub struct Synthetic {
    pub dir: tempfile::TempDir,
    pub sites: Vec<verbund_synth::WrittenSite>,
    pub pooled: SessionContext,
}

impl Synthetic {
    pub async fn new(seed: u64, scale: f64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let generated = verbund_synth::generate(seed, scale)?;
        let mut sites = Vec::new();
        for (i, site) in generated.iter().enumerate() {
            let format =
                if i == generated.len() - 1 { verbund_synth::Format::Csv } else { verbund_synth::Format::Parquet };
            let ext = if format == verbund_synth::Format::Csv { "csv" } else { "parquet" };
            let site_dir = dir.path().join(&site.site);
            std::fs::create_dir_all(&site_dir)?;
            let mut tables = Vec::new();
            for (name, batch) in &site.tables {
                let path = site_dir.join(format!("{name}.{ext}"));
                verbund_synth::write_batch(&path, batch, format)?;
                tables.push(verbund_synth::WrittenTable {
                    name: name.clone(),
                    path,
                    patient_key: verbund_synth::PATIENT_KEY.into(),
                    columns: batch.schema().fields().iter().map(|f| f.name().clone()).collect(),
                });
            }
            sites.push(verbund_synth::WrittenSite { site: site.site.clone(), tables });
        }
        let pooled = pooled_context(&generated)?;
        Ok(Self { dir, sites, pooled })
    }

    pub async fn node(&self, network: &Network, index: usize, policy: Policy) -> anyhow::Result<Node> {
        let site = &self.sites[index];
        let datasets: Vec<verbund_node::config::DatasetConfig> = site
            .tables
            .iter()
            .map(|t| verbund_node::config::DatasetConfig {
                name: t.name.clone(),
                path: t.path.clone(),
                format: None,
                patient_key: t.patient_key.clone(),
                columns: t.columns.clone(),
                model: None,
            })
            .collect();
        let catalogue = Catalogue::open(&datasets).await.context("open site data")?;
        Ok(network.node(&site.site, catalogue, policy))
    }

    /// A network with every synthetic site under the same policy; `extra` names more sites
    /// the coordinator will accept.
    pub async fn network(&self, policy: Policy, extra: &[&str]) -> anyhow::Result<Network> {
        let mut names: Vec<&str> = self.sites.iter().map(|s| s.site.as_str()).collect();
        names.extend_from_slice(extra);
        let mut network = Network::start(&names).await;
        for i in 0..self.sites.len() {
            let node = self.node(&network, i, policy.clone()).await?;
            network.add_node(node).await;
        }
        Ok(network)
    }

    /// The same SQL on the pooled data of all sites.
    pub async fn pooled(&self, sql: &str) -> anyhow::Result<RecordBatch> {
        run_sql(&self.pooled, sql).await
    }
}

pub async fn run_sql(ctx: &SessionContext, sql: &str) -> anyhow::Result<RecordBatch> {
    let df = ctx.sql(sql).await?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
}

/// One table per name holding every site's rows.
pub fn pooled_context(sites: &[verbund_synth::SiteData]) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    verbund_query::functions::register_all(&ctx);
    let mut by_name: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    for site in sites {
        for (name, batch) in &site.tables {
            by_name.entry(name.clone()).or_default().push(batch.clone());
        }
    }
    for (name, batches) in by_name {
        let table = MemTable::try_new(batches[0].schema(), vec![batches])?;
        ctx.register_table(name.as_str(), Arc::new(table))?;
    }
    Ok(ctx)
}

/// A site's data as a context of its own (for per-site expectations).
pub fn site_context(site: &verbund_synth::SiteData) -> anyhow::Result<SessionContext> {
    pooled_context(std::slice::from_ref(site))
}

/// The node's `[[dataset]]` entries for the datasets `verbund import` wrote under `out`, as
/// the command prints them (every column, model `fhir/<dataset>`).
pub fn fhir_datasets(out: &std::path::Path) -> Vec<verbund_node::config::DatasetConfig> {
    verbund_fhir::DATASETS
        .iter()
        .zip(verbund_fhir::COLUMNS.iter())
        .map(|(name, columns)| verbund_node::config::DatasetConfig {
            name: name.to_string(),
            path: out.join(name).join("current"),
            format: Some(verbund_node::config::FileFormat::Parquet),
            patient_key: "patient_id".into(),
            columns: columns.iter().map(|(c, _)| c.to_string()).collect(),
            model: Some(format!("fhir/{name}")),
        })
        .collect()
}
