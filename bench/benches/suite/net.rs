//! The network benchmarks: federated latency over mutual TLS on loopback, throughput with
//! many concurrent researchers, and the resident memory of a node running as an OS process
//! of its own.

use crate::sys::{Memory, median, memory_of, percentile, round};
use anyhow::{Context, bail};
use arrow_flight::FlightInfo;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verbund_node::config::{DatasetConfig, NodeTls};
use verbund_node::{Catalogue, Node, NodeConfig};
use verbund_policies::{Policy, ProjectRule};
use verbund_proto::v1 as pb;
use verbund_tests::{Network, PROJECT, with_token};

/// The first argument with which the suite runs as a node process.
pub const CHILD_ARG: &str = "__verbund-bench-node";

/// The query of the latency and throughput runs: filter, grouping, the distinct-patient
/// count, a mean and a variance.
pub const SQL: &str = "SELECT sex, count(DISTINCT patient_id) AS patients, avg(bmi), var_samp(hba1c) \
                       FROM t WHERE age >= 18 GROUP BY sex";

/// A light query, so that the latency figures show the network's own overhead rather than
/// the sites' execution time on a shared 2-core machine.
pub const LIGHT_SQL: &str = "SELECT count(*) FROM t WHERE age >= 65";

/// The queries of the latency runs: (name, SQL).
pub const LATENCY_QUERIES: [(&str, &str); 2] = [("typical", SQL), ("light", LIGHT_SQL)];

/// A dataset declaration as a node configuration file would hold it.
pub fn dataset_config(name: &str, path: &Path) -> anyhow::Result<DatasetConfig> {
    Ok(DatasetConfig {
        name: name.into(),
        path: path.to_path_buf(),
        format: None,
        patient_key: crate::data::PATIENT_KEY.into(),
        columns: crate::data::COLUMNS.iter().map(|c| c.to_string()).collect(),
        model: None,
    })
}

/// The site policy of the network runs, as a hospital might write it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyValues {
    pub min_cell_size: u32,
    pub max_groups: u32,
    pub max_concurrent_queries: u32,
}

impl PolicyValues {
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut policy = Policy {
            min_cell_size: self.min_cell_size,
            max_groups: self.max_groups,
            max_concurrent_queries: self.max_concurrent_queries,
            // Exact numbers: these sections measure the network, not the noise (see `--only privacy`).
            profile: verbund_policies::Profile::KOnly,
            ..Policy::default()
        };
        policy.projects.push(ProjectRule { roles: vec!["researcher".into()], ..ProjectRule::everything(PROJECT) });
        policy.validate()?;
        Ok(policy)
    }

    /// Every limit of the policy as the node reads it, including the defaults of fields the
    /// file leaves out: `name: value` for each of the policy file's top-level settings.
    pub fn effective(self) -> String {
        let limits = self.policy().and_then(|p| Ok(toml::to_string(&Policy { projects: Vec::new(), ..p })?));
        match limits {
            Ok(text) => text
                .lines()
                .filter_map(|line| line.split_once(" = "))
                .filter(|(name, _)| *name != "project")
                .map(|(name, value)| format!("{name}: {value}"))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("invalid: {e}"),
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "min_cell_size": self.min_cell_size, "max_groups": self.max_groups,
            "max_concurrent_queries": self.max_concurrent_queries, "effective": self.effective(),
        })
    }
}

pub fn site_name(i: usize) -> String {
    format!("site-{i:02}")
}

/// Modest per-site datasets (`rows` each), generated once and cached.
pub fn site_files(cache_dir: &Path, sites: usize, rows: usize, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let dir = cache_dir.join(format!("sites-v1-rows{rows}-seed{seed}"));
    std::fs::create_dir_all(&dir)?;
    (0..sites)
        .map(|i| {
            let path = dir.join(format!("{}.parquet", site_name(i)));
            if !path.exists() {
                crate::data::generate(&path, rows, seed.wrapping_add(1000 + i as u64))?;
            }
            Ok(path)
        })
        .collect()
}

async fn site_node(network: &Network, site: &str, file: &Path, policy: &Policy) -> anyhow::Result<Node> {
    let catalogue = Catalogue::open(&[dataset_config(crate::data::TABLE, file)?]).await?;
    Ok(network.node(site, catalogue, policy.clone()))
}

/// A node running as a process of its own (this executable, re-run with [`CHILD_ARG`]).
/// Killed when dropped; it also ends by itself when this process goes away (its stdin
/// closes).
pub struct NodeChild {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeChild {
    /// Writes a node configuration (policy, TLS files, token keys, dataset) into `dir`,
    /// starts the node and waits until the coordinator sees it.
    pub async fn start(
        network: &Network,
        dir: &Path,
        site: &str,
        file: &Path,
        policy: PolicyValues,
    ) -> anyhow::Result<Self> {
        let policy_path = dir.join(format!("{site}-policy.toml"));
        std::fs::write(&policy_path, policy.policy()?.to_toml()?)?;
        let tls = network.pki.site(site);
        let tls = NodeTls { ca: tls.ca, cert: tls.cert, key: tls.key, coordinator_name: Some("127.0.0.1".into()) };
        let mut config = NodeConfig::new(site, network.link.parse()?, tls, network.pki.auth.clone());
        config.policy = Some(policy_path);
        config.datasets = vec![dataset_config(crate::data::TABLE, file)?];
        let config_path = dir.join(format!("{site}.toml"));
        std::fs::write(&config_path, config.to_toml()?)?;
        NodeConfig::load(&config_path).context("the node configuration written for the child")?;
        let log = dir.join(format!("{site}.log"));
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg(CHILD_ARG)
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the node process")?;
        let pid = child.id();
        let guard = Self { child, pid, log };
        if !network.coordinator.sites().wait_for(&[site], Duration::from_secs(60)).await {
            let text = std::fs::read_to_string(&guard.log).unwrap_or_default();
            bail!("the node process for {site} did not connect within 60 s; its log:\n{text}");
        }
        Ok(guard)
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid)
    }
}

/// The node process: runs `verbund node --config <path>` through the CLI library, and exits
/// when its parent goes away (stdin reaches end of file).
pub fn child_main(config: Option<&String>) -> anyhow::Result<()> {
    use clap::Parser;
    let config = config.ok_or_else(|| anyhow::anyhow!("{CHILD_ARG} needs the node configuration path"))?;
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    let cli = verbund_cli::Cli::try_parse_from(["verbund", "node", "--config", config.as_str()])?;
    verbund_cli::init_tracing(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(verbund_cli::run(cli))
}

/// Starts a network of `sites` sites; site 0 runs as a separate process when `child_dir`
/// is given, every other site in this process (on a runtime of its own).
pub async fn start_network(
    files: &[PathBuf],
    policy: PolicyValues,
    child_dir: Option<&Path>,
) -> anyhow::Result<(Network, Option<NodeChild>)> {
    let names: Vec<String> = (0..files.len()).map(site_name).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut network = Network::start(&name_refs).await;
    let mut child = None;
    for (i, file) in files.iter().enumerate() {
        match child_dir {
            Some(dir) if i == 0 => child = Some(NodeChild::start(&network, dir, &names[i], file, policy).await?),
            _ => {
                let node = site_node(&network, &names[i], file, &policy.policy()?).await?;
                network.add_node(node).await;
            }
        }
    }
    Ok((network, child))
}

fn request(sql: &str) -> pb::ResearchQuery {
    pb::ResearchQuery { sql: sql.into(), project: PROJECT.into(), ..Default::default() }
}

pub struct Latency {
    pub sites: usize,
    pub query: &'static str,
    pub samples: Vec<Duration>,
    /// Per query, the slowest site's round trip as the coordinator measured it.
    pub slowest_site_ms: Vec<f64>,
    pub incomplete: usize,
    pub failed: usize,
    /// Per site, the median of `Node::handle` on that site's data.
    pub local_medians_ms: Vec<f64>,
    /// The same query through Arrow Flight SQL, in the same run on the same network.
    pub flight_sql: Option<FlightLatency>,
}

/// Sequential queries through Arrow Flight SQL: GetFlightInfo (runs the federated query)
/// plus DoGet (fetches the result), as an ADBC client does for `cursor.execute` + fetch.
pub struct FlightLatency {
    pub samples: Vec<Duration>,
    pub incomplete: usize,
    pub failed: usize,
}

impl FlightLatency {
    pub fn to_json(&self) -> Value {
        json!({
            "queries": self.samples.len(),
            "p50_ms": round(percentile(&self.samples, 50.0), 2), "p99_ms": round(percentile(&self.samples, 99.0), 2),
            "min_ms": round(crate::sys::min(&self.samples), 2),
            "incomplete_answers": self.incomplete, "failed": self.failed,
        })
    }
}

impl Latency {
    pub fn p50(&self) -> f64 {
        percentile(&self.samples, 50.0)
    }

    pub fn p99(&self) -> f64 {
        percentile(&self.samples, 99.0)
    }

    pub fn slowest_local(&self) -> Option<f64> {
        self.local_medians_ms.iter().copied().reduce(f64::max)
    }

    pub fn to_json(&self) -> Value {
        let mut slowest = self.slowest_site_ms.clone();
        slowest.sort_by(f64::total_cmp);
        let slowest_median = slowest.get(slowest.len() / 2).copied().unwrap_or(f64::NAN);
        let mut value = json!({
            "sites": self.sites, "query": self.query, "queries": self.samples.len(),
            "p50_ms": round(self.p50(), 2), "p99_ms": round(self.p99(), 2),
            "min_ms": round(crate::sys::min(&self.samples), 2),
            "median_slowest_site_round_trip_ms": round(slowest_median, 2),
            "incomplete_answers": self.incomplete, "failed": self.failed,
            "local_median_ms_per_site": self.local_medians_ms.iter().map(|m| round(*m, 2)).collect::<Vec<_>>(),
            "slowest_site_local_median_ms": self.slowest_local().map(|m| round(m, 2)),
            "p50_minus_slowest_local_ms": self.slowest_local().map(|m| round(self.p50() - m, 2)),
            "sum_of_local_medians_ms": if self.local_medians_ms.is_empty() { Value::Null } else { json!(round(self.local_medians_ms.iter().sum::<f64>(), 2)) },
        });
        if let Some(flight) = &self.flight_sql {
            value[format!("{}_flight_sql", self.query)] = flight.to_json();
        }
        value
    }
}

/// `queries` sequential federated queries over one TLS channel, after `warmup` more.
pub async fn latency(
    network: &Network,
    sites: usize,
    (name, sql): (&'static str, &str),
    warmup: usize,
    queries: usize,
) -> anyhow::Result<Latency> {
    let mut client = network.client().await;
    let token = network.pki.token();
    let mut out = Latency {
        sites,
        query: name,
        samples: Vec::with_capacity(queries),
        slowest_site_ms: vec![],
        incomplete: 0,
        failed: 0,
        local_medians_ms: vec![],
        flight_sql: None,
    };
    for i in 0..warmup + queries {
        let started = Instant::now();
        let result = client.query(with_token(request(sql), &token)).await;
        let elapsed = started.elapsed();
        if i < warmup {
            continue;
        }
        match result {
            Ok(response) => {
                let response = response.into_inner();
                if response.sites.len() != sites
                    || response.sites.iter().any(|s| s.outcome() != pb::SiteOutcome::Answered)
                {
                    out.incomplete += 1;
                    if out.incomplete == 1 {
                        let statuses: Vec<String> = response
                            .sites
                            .iter()
                            .filter(|s| s.outcome() != pb::SiteOutcome::Answered)
                            .map(|s| format!("{}: {:?} {}", s.site, s.outcome(), s.message))
                            .collect();
                        eprintln!("    incomplete answer: {}", statuses.join("; "));
                    }
                }
                out.slowest_site_ms.push(response.sites.iter().map(|s| s.elapsed_ms).fold(0.0, f64::max));
                out.samples.push(elapsed);
            }
            Err(status) => {
                out.failed += 1;
                if out.failed == 1 {
                    eprintln!("    failed: {status}");
                }
            }
        }
    }
    Ok(out)
}

/// `queries` sequential queries through Arrow Flight SQL over one TLS channel (the researcher
/// API's), after `warmup` more: each is GetFlightInfo, which runs the federated query, then
/// DoGet of its one ticket.
pub async fn latency_flight_sql(
    network: &Network,
    sites: usize,
    sql: &str,
    warmup: usize,
    queries: usize,
) -> anyhow::Result<FlightLatency> {
    use futures::TryStreamExt;
    let mut client = network.flight_client().await;
    // A researcher of its own: the native runs before already stored hundreds of answers for
    // the test researcher, and the query store caps stored answers per researcher.
    let token = network.pki.issuer.issue("flight-sql-bench", &[PROJECT], &["researcher"], Duration::from_secs(3600));
    client.set_token(token);
    let mut out = FlightLatency { samples: Vec::with_capacity(queries), incomplete: 0, failed: 0 };
    for i in 0..warmup + queries {
        let started = Instant::now();
        let result: anyhow::Result<FlightInfo> = async {
            let info = client.execute(sql.to_string(), None).await?;
            let ticket = info.endpoint.first().and_then(|e| e.ticket.clone()).context("no ticket")?;
            let batches: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
            anyhow::ensure!(batches.iter().map(|b| b.num_rows()).sum::<usize>() == 1, "not one row");
            Ok(info)
        }
        .await;
        let elapsed = started.elapsed();
        if i < warmup {
            continue;
        }
        match result {
            Ok(info) => {
                let schema = info.try_decode_schema()?;
                let listed: Vec<Value> = schema
                    .metadata()
                    .get(verbund_coordinator::flight::SITES)
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                if listed.len() != sites || listed.iter().any(|s| s["status"] != "answered") {
                    out.incomplete += 1;
                }
                out.samples.push(elapsed);
            }
            Err(e) => {
                out.failed += 1;
                if out.failed == 1 {
                    eprintln!("    Flight SQL failed: {e:#}");
                }
            }
        }
    }
    Ok(out)
}

/// Per site, the median time of `Node::handle` for `sql` on that site's own data (a node
/// of its own in this process, answering one query at a time).
pub async fn local_medians(
    network: &Network,
    files: &[PathBuf],
    policy: PolicyValues,
    sql: &str,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let token = network.pki.token();
    let mut medians = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let node = site_node(network, &site_name(i), file, &policy.policy()?).await?;
        let plan = verbund_coordinator::frontend::plan_sql(sql, &node.engine().catalogue())
            .await
            .map_err(anyhow::Error::msg)?;
        let q = crate::exec::node_query(format!("local-{i}"), &token, plan.request);
        let mut samples = Vec::with_capacity(runs);
        for run in 0..runs + 5 {
            let started = Instant::now();
            let outcome = node.handle(&q).await;
            let elapsed = started.elapsed();
            if let Err(refusal) = outcome {
                bail!("site {i} refused the local run: {refusal}");
            }
            if run >= 5 {
                samples.push(elapsed);
            }
        }
        medians.push(median(&samples));
    }
    Ok(medians)
}

pub struct Throughput {
    pub policy: PolicyValues,
    pub sites: usize,
    pub researchers: usize,
    pub elapsed: Duration,
    /// Every site answered.
    pub complete: usize,
    /// A response came, but some sites did not answer (e.g. refused as overloaded).
    pub partial: usize,
    /// No response (a gRPC error).
    pub failed: BTreeMap<String, usize>,
    /// Site statuses over all responses, by outcome and message.
    pub site_outcomes: BTreeMap<String, usize>,
    pub complete_latencies: Vec<Duration>,
    pub all_latencies: Vec<Duration>,
    pub node_memory_idle: Option<Memory>,
    pub node_memory_peak_rss_mib: Option<f64>,
    pub node_memory_after: Option<Memory>,
}

impl Throughput {
    pub fn complete_per_second(&self) -> f64 {
        self.complete as f64 / self.elapsed.as_secs_f64()
    }

    pub fn responses_per_second(&self) -> f64 {
        (self.complete + self.partial) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    pub fn to_json(&self) -> Value {
        let mem = |m: &Option<Memory>| {
            m.map(|m| json!({ "vm_rss_mib": round(m.rss_mib, 1), "vm_hwm_mib": round(m.hwm_mib, 1) }))
        };
        json!({
            "policy": self.policy.to_json(), "sites": self.sites, "researchers": self.researchers,
            "clients": "one gRPC channel (own TLS connection) per researcher task",
            "seconds": round(self.elapsed.as_secs_f64(), 2),
            "complete_answers": self.complete, "partial_answers": self.partial, "failed": self.failed,
            "complete_per_second": round(self.complete_per_second(), 1),
            "responses_per_second": round(self.responses_per_second(), 1),
            "site_outcomes": self.site_outcomes,
            "latency_complete_p50_ms": round(percentile(&self.complete_latencies, 50.0), 2),
            "latency_complete_p99_ms": round(percentile(&self.complete_latencies, 99.0), 2),
            "latency_all_p50_ms": round(percentile(&self.all_latencies, 50.0), 2),
            "latency_all_p99_ms": round(percentile(&self.all_latencies, 99.0), 2),
            "node_process_memory": {
                "idle_after_attach": mem(&self.node_memory_idle),
                "peak_vm_rss_sampled_under_load_mib": self.node_memory_peak_rss_mib.map(|m| round(m, 1)),
                "after_load": mem(&self.node_memory_after),
            },
        })
    }
}

#[derive(Default)]
struct Tally {
    complete: usize,
    partial: usize,
    failed: BTreeMap<String, usize>,
    site_outcomes: BTreeMap<String, usize>,
    complete_latencies: Vec<Duration>,
    all_latencies: Vec<Duration>,
}

fn outcome_key(s: &pb::SiteStatus) -> String {
    let outcome = verbund_coordinator::api::site_outcome_label(s.outcome());
    if s.outcome() == pb::SiteOutcome::Answered { outcome.to_string() } else { format!("{outcome}: {}", s.message) }
}

/// `researchers` concurrent tasks, each with its own TLS channel, send [`SQL`] in a loop
/// for `duration`; the node process's memory is sampled every 100 ms meanwhile.
pub async fn throughput(
    network: &Network,
    sites: usize,
    policy: PolicyValues,
    researchers: usize,
    duration: Duration,
    child: Option<&NodeChild>,
) -> anyhow::Result<Throughput> {
    let node_memory_idle = child.map(NodeChild::memory).transpose()?;
    let token = Arc::new(network.pki.token());
    let barrier = Arc::new(tokio::sync::Barrier::new(researchers + 1));
    let mut tasks = Vec::with_capacity(researchers);
    for _ in 0..researchers {
        let mut client = verbund_tests::researcher_client(&network.api, &network.pki.ca_path).await;
        let (token, barrier) = (token.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                let started = Instant::now();
                let result = client.query(with_token(request(SQL), &token)).await;
                let elapsed = started.elapsed();
                tally.all_latencies.push(elapsed);
                match result {
                    Ok(response) => {
                        let response = response.into_inner();
                        let mut all = response.sites.len() == sites;
                        for s in &response.sites {
                            all &= s.outcome() == pb::SiteOutcome::Answered;
                            *tally.site_outcomes.entry(outcome_key(s)).or_default() += 1;
                        }
                        if all {
                            tally.complete += 1;
                            tally.complete_latencies.push(elapsed);
                        } else {
                            tally.partial += 1;
                        }
                    }
                    Err(status) => {
                        *tally.failed.entry(format!("{:?}: {}", status.code(), status.message())).or_default() += 1;
                    }
                }
            }
            tally
        }));
    }
    let sampler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = child.map(|c| {
        let (pid, stop) = (c.pid, sampler_stop.clone());
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = memory_of(pid) {
                    peak = peak.max(m.rss_mib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    barrier.wait().await;
    let started = Instant::now();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await?;
        total.complete += t.complete;
        total.partial += t.partial;
        for (k, v) in t.failed {
            *total.failed.entry(k).or_default() += v;
        }
        for (k, v) in t.site_outcomes {
            *total.site_outcomes.entry(k).or_default() += v;
        }
        total.complete_latencies.extend(t.complete_latencies);
        total.all_latencies.extend(t.all_latencies);
    }
    let elapsed = started.elapsed();
    sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let node_memory_peak_rss_mib = match sampler {
        Some(s) => Some(s.await?),
        None => None,
    };
    let node_memory_after = child.map(NodeChild::memory).transpose()?;
    Ok(Throughput {
        policy,
        sites,
        researchers,
        elapsed,
        complete: total.complete,
        partial: total.partial,
        failed: total.failed,
        site_outcomes: total.site_outcomes,
        complete_latencies: total.complete_latencies,
        all_latencies: total.all_latencies,
        node_memory_idle,
        node_memory_peak_rss_mib,
        node_memory_after,
    })
}

/// `cores`: the machine's cores, which all sites share here.
pub fn latency_markdown(runs: &[Latency], cores: usize) -> String {
    let mut out = String::from(
        "| sites | query | queries | p50 ms | p99 ms | slowest site's local median ms | p50 − slowest local ms | target ≤ 5 ms | sum of sites' local medians ms | p50 − sum of local medians / cores ms | median slowest-site round trip ms (coordinator-measured) | incomplete / failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for l in runs {
        let mut slowest = l.slowest_site_ms.clone();
        slowest.sort_by(f64::total_cmp);
        let slowest_median = slowest.get(slowest.len() / 2).copied().unwrap_or(f64::NAN);
        let local = l.slowest_local().unwrap_or(f64::NAN);
        let overhead = l.p50() - local;
        let sum: f64 = l.local_medians_ms.iter().sum();
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} / {} |\n",
            l.sites,
            l.query,
            l.samples.len(),
            l.p50(),
            l.p99(),
            local,
            overhead,
            if l.sites != 10 {
                "–"
            } else if overhead <= 5.0 {
                "met"
            } else {
                "missed"
            },
            sum,
            l.p50() - sum / cores as f64,
            slowest_median,
            l.incomplete,
            l.failed
        ));
    }
    for l in runs {
        if let Some(f) = &l.flight_sql {
            out.push_str(&format!(
                "\n{} sites, {} query through Arrow Flight SQL (GetFlightInfo + DoGet, same network, same run): \
                 p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms over {} queries (native p50 {:.2} ms, min {:.2} ms); \
                 incomplete / failed {} / {}\n",
                l.sites,
                l.query,
                percentile(&f.samples, 50.0),
                percentile(&f.samples, 99.0),
                crate::sys::min(&f.samples),
                f.samples.len(),
                l.p50(),
                crate::sys::min(&l.samples),
                f.incomplete,
                f.failed,
            ));
        }
    }
    for l in runs.iter().filter(|l| l.sites == 10) {
        out.push_str(&format!(
            "\n10 sites, {} query: local `Node::handle` medians per site (ms): {}\n",
            l.query,
            l.local_medians_ms.iter().map(|m| format!("{m:.2}")).collect::<Vec<_>>().join(", "),
        ));
    }
    out
}

pub fn throughput_markdown(runs: &[Throughput]) -> String {
    let mut out = String::from(
        "| node policy (k / max groups / max concurrent) | researchers | seconds | complete answers/s | responses/s | complete | partial | failed | p50 / p99 ms (complete) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in runs {
        out.push_str(&format!(
            "| {} / {} / {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.1} / {:.1} |\n",
            t.policy.min_cell_size,
            t.policy.max_groups,
            t.policy.max_concurrent_queries,
            t.researchers,
            t.elapsed.as_secs_f64(),
            t.complete_per_second(),
            t.responses_per_second(),
            t.complete,
            t.partial,
            t.failed_total(),
            percentile(&t.complete_latencies, 50.0),
            percentile(&t.complete_latencies, 99.0),
        ));
    }
    for t in runs {
        out.push_str(&format!(
            "\nSite statuses with max_concurrent_queries = {} (node policy: {}):\n",
            t.policy.max_concurrent_queries,
            t.policy.effective()
        ));
        for (k, v) in &t.site_outcomes {
            out.push_str(&format!("- {k}: {v}\n"));
        }
        for (k, v) in &t.failed {
            out.push_str(&format!("- failed, {k}: {v}\n"));
        }
    }
    out
}

pub fn memory_markdown(runs: &[Throughput]) -> String {
    let mut out = String::from(
        "| node process (max concurrent) | idle after attach: VmRSS / VmHWM MiB | under load: peak sampled VmRSS MiB | after load: VmRSS / VmHWM MiB | idle target < 50 MiB |\n|---|---|---|---|---|\n",
    );
    let pair = |m: &Option<Memory>| m.map(|m| format!("{:.1} / {:.1}", m.rss_mib, m.hwm_mib)).unwrap_or("–".into());
    for t in runs {
        let verdict = match t.node_memory_idle {
            Some(m) if m.rss_mib < 50.0 => "met",
            Some(_) => "missed",
            None => "–",
        };
        out.push_str(&format!(
            "| site-00 ({}) | {} | {} | {} | {} |\n",
            t.policy.max_concurrent_queries,
            pair(&t.node_memory_idle),
            t.node_memory_peak_rss_mib.map(|m| format!("{m:.1}")).unwrap_or("–".into()),
            pair(&t.node_memory_after),
            verdict
        ));
    }
    out
}
