//! Test harness: a real coordinator and real nodes in-process on 127.0.0.1:0, synthetic
//! sites, a pooled reference over the same data, and helpers to compare answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod compare;
pub mod proxy;
pub mod slow;

use anyhow::Context;
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
use verbund_node::{Catalog, LinkOptions, Node};
use verbund_policies::Policy;
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_client::ResearcherClient;

/// A node running on a runtime of its own, so that killing it closes its sockets the way a
/// crashed process would.
pub struct NodeProcess {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeProcess {
    pub fn start(node: Node, options: LinkOptions) -> Self {
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let shutdown = CancellationToken::new();
            runtime.spawn(Arc::new(node).run(options, shutdown.clone()));
            // Block this thread until killed; the runtime keeps serving meanwhile.
            let _ = killed.recv();
            // Dropping the runtime drops every task and socket at once: no goodbye.
            runtime.shutdown_timeout(Duration::from_millis(0));
        });
        Self { kill: Some(kill), thread: Some(thread) }
    }

    /// Kills the node abruptly.
    pub fn kill(mut self) {
        self.stop();
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
    pub coordinator: Arc<Coordinator>,
    /// The node-link address, e.g. http://127.0.0.1:40000
    pub link: String,
    /// The researcher API address.
    pub api: String,
    pub nodes: HashMap<String, NodeProcess>,
    shutdown: CancellationToken,
}

impl Network {
    pub async fn start() -> Self {
        let node_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = format!("http://{}", node_listener.local_addr().unwrap());
        let api = format!("http://{}", api_listener.local_addr().unwrap());
        let coordinator = Coordinator::new(CoordinatorConfig::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(coordinator.clone().serve(node_listener, api_listener, shutdown.clone()));
        Self { coordinator, link, api, nodes: HashMap::new(), shutdown }
    }

    /// Link options for tests: quick heartbeats and redials.
    pub fn link_options(&self) -> LinkOptions {
        let mut o = LinkOptions::new(self.link.clone());
        o.heartbeat = Duration::from_millis(500);
        o.backoff_min = Duration::from_millis(50);
        o.backoff_max = Duration::from_millis(500);
        o
    }

    /// Starts a node and waits until the coordinator sees it connected.
    pub async fn add_node(&mut self, node: Node) {
        let options = self.link_options();
        self.add_node_with(node, options).await;
    }

    pub async fn add_node_with(&mut self, node: Node, options: LinkOptions) {
        let site = node.site().to_string();
        let process = NodeProcess::start(node, options);
        self.nodes.insert(site.clone(), process);
        assert!(
            self.coordinator.registry().wait_for(&[site.as_str()], Duration::from_secs(10)).await,
            "site {site} did not connect"
        );
    }

    pub fn kill(&mut self, site: &str) {
        if let Some(p) = self.nodes.remove(site) {
            p.kill();
        }
    }

    pub async fn client(&self) -> ResearcherClient<tonic::transport::Channel> {
        ResearcherClient::connect(self.api.clone()).await.unwrap()
    }

    /// Runs a query; returns the merged table and the full response.
    pub async fn query(&self, sql: &str) -> Result<(RecordBatch, pb::QueryResponse), tonic::Status> {
        self.query_with(pb::ResearchQuery { sql: sql.into(), ..Default::default() }).await
    }

    pub async fn query_with(
        &self,
        request: pb::ResearchQuery,
    ) -> Result<(RecordBatch, pb::QueryResponse), tonic::Status> {
        let response = self.client().await.query(request).await?.into_inner();
        Ok((decode(&response.arrow_ipc).unwrap(), response))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.shutdown.cancel();
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

    pub async fn node(&self, index: usize, policy: Policy) -> anyhow::Result<Node> {
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
            })
            .collect();
        let catalog = Catalog::open(&datasets).await.context("open site data")?;
        Ok(Node::new(site.site.clone(), catalog, policy))
    }

    /// A network with every synthetic site under the same policy.
    pub async fn network(&self, policy: Policy) -> anyhow::Result<Network> {
        let mut network = Network::start().await;
        for i in 0..self.sites.len() {
            network.add_node(self.node(i, policy.clone()).await?).await;
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
