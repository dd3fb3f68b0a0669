//! Node execution against raw DataFusion on the same Parquet file, in the same process.
//!
//! Node side: the researcher's SQL goes through the coordinator's front-end
//! (`verbund_coordinator::frontend::plan_sql`, timed separately) into the typed request, and
//! `Node::handle` answers it with a valid token under a policy with k = 5: token check,
//! request check, policy, DataFusion plan and execution, output checker. Raw side: a fresh
//! `SessionContext` with `register_parquet`, default configuration, `sql(..).collect()`.
//! Runs are interleaved (the order rotates every round) so that both see the same caches.

use crate::sys::{median, min};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use verbund_node::{Catalogue, Node};
use verbund_proto::v1 as pb;

pub struct Query {
    pub id: &'static str,
    pub what: &'static str,
    /// What the researcher sends (through the coordinator's front-end).
    pub node_sql: String,
    /// The plain DataFusion equivalent.
    pub raw_sql: String,
    /// The raw SQL plus an exact distinct-patient count per cell.
    pub raw_k_sql: Option<String>,
    /// The raw SQL plus `patients_up_to(patient_id, 5)` per cell: the cell-size check as the
    /// node computes it (run with verbund's functions registered), to separate that cost
    /// from the rest of the node's overhead.
    pub raw_cap_sql: Option<String>,
}

const COVARIATES: [&str; 5] = ["bmi", "hba1c", "sbp", "ldl", "glucose"];

pub fn queries() -> Vec<Query> {
    let filter = "WHERE age >= 65 AND sex = 'female'";
    let moments = "SELECT region, avg(hba1c), var_samp(hba1c)";
    let hist_raw = "SELECT floor((bmi - 10) / 2) AS b, count(*)";
    let hist_where = "FROM t WHERE bmi >= 10 AND bmi < 50 GROUP BY b";
    let mut sums = vec!["count(*)".to_string()];
    sums.extend(COVARIATES.iter().map(|c| format!("sum({c})")));
    for (i, a) in COVARIATES.iter().enumerate() {
        for b in &COVARIATES[i..] {
            sums.push(format!("sum({a} * {b})"));
        }
    }
    let complete: Vec<String> = COVARIATES.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let products = format!("SELECT {} FROM t WHERE {}", sums.join(", "), complete.join(" AND "));
    let products_k =
        |patients: &str| format!("SELECT {}, {patients} FROM t WHERE {}", sums.join(", "), complete.join(" AND "));
    const EXACT: &str = "count(DISTINCT patient_id)";
    const CAPPED: &str = "patients_up_to(patient_id, 5)";
    let distinct = "SELECT region, sex, count(DISTINCT patient_id) FROM t GROUP BY region, sex".to_string();
    vec![
        Query {
            id: "a_count_filter",
            what: "(a) count with filter",
            node_sql: format!("SELECT count(*) FROM t {filter}"),
            raw_sql: format!("SELECT count(*) FROM t {filter}"),
            raw_k_sql: Some(format!("SELECT count(*), {EXACT} FROM t {filter}")),
            raw_cap_sql: Some(format!("SELECT count(*), {CAPPED} FROM t {filter}")),
        },
        Query {
            id: "b_grouped_moments",
            what: "(b) grouped mean/variance",
            node_sql: format!("{moments} FROM t GROUP BY region"),
            raw_sql: format!("{moments} FROM t GROUP BY region"),
            raw_k_sql: Some(format!("{moments}, {EXACT} FROM t GROUP BY region")),
            raw_cap_sql: Some(format!("{moments}, {CAPPED} FROM t GROUP BY region")),
        },
        Query {
            id: "c_histogram",
            what: "(c) 20-bin histogram: histogram()",
            node_sql: "SELECT histogram(bmi, 10, 2, 20) AS h FROM t".into(),
            raw_sql: format!("{hist_raw} {hist_where}"),
            raw_k_sql: Some(format!("{hist_raw}, {EXACT} {hist_where}")),
            raw_cap_sql: Some(format!("{hist_raw}, {CAPPED} {hist_where}")),
        },
        Query {
            id: "c_bin_grouping",
            what: "(c') 20-bin histogram: GROUP BY bin()",
            node_sql: "SELECT bin(bmi, 10, 2, 20) AS b, count(*) FROM t GROUP BY b".into(),
            raw_sql: format!("{hist_raw} {hist_where}"),
            raw_k_sql: Some(format!("{hist_raw}, {EXACT} {hist_where}")),
            raw_cap_sql: Some(format!("{hist_raw}, {CAPPED} {hist_where}")),
        },
        Query {
            id: "d_cross_products",
            what: "(d) 5-covariate cross-products",
            node_sql: products.clone(),
            raw_sql: products,
            raw_k_sql: Some(products_k(EXACT)),
            raw_cap_sql: Some(products_k(CAPPED)),
        },
        Query {
            id: "e_distinct_patients",
            what: "(e) grouped distinct patients",
            node_sql: distinct.clone(),
            raw_sql: distinct,
            raw_k_sql: None,
            raw_cap_sql: None,
        },
    ]
}

/// One query's figures.
pub struct Figures {
    pub query: &'static str,
    pub what: &'static str,
    pub raw: Vec<Duration>,
    pub raw_k: Vec<Duration>,
    pub raw_cap: Vec<Duration>,
    pub node: Vec<Duration>,
    pub plan: Vec<Duration>,
    /// Why the node side could not be measured (refused by the front-end or the node).
    pub refused: Option<String>,
    pub raw_rows: usize,
    pub node_groups: usize,
    pub node_withheld: u32,
}

impl Figures {
    pub fn measured(&self) -> bool {
        !self.node.is_empty() && !self.raw.is_empty()
    }

    pub fn ratio(&self) -> f64 {
        median(&self.node) / median(&self.raw)
    }

    pub fn to_json(&self) -> Value {
        let stats = |v: &[Duration]| {
            if v.is_empty() {
                Value::Null
            } else {
                json!({ "median_ms": crate::sys::round(median(v), 2), "min_ms": crate::sys::round(min(v), 2), "runs": v.len() })
            }
        };
        json!({
            "query": self.query, "what": self.what,
            "raw": stats(&self.raw), "raw_with_exact_patient_counts": stats(&self.raw_k),
            "raw_with_patients_up_to_5": stats(&self.raw_cap),
            "node": stats(&self.node), "coordinator_planning": stats(&self.plan),
            "ratio_node_to_raw": if !self.measured() { Value::Null } else { json!(crate::sys::round(self.ratio(), 3)) },
            "ratio_node_to_raw_minima": if !self.measured() { Value::Null } else { json!(crate::sys::round(min(&self.node) / min(&self.raw), 3)) },
            "refused": self.refused, "raw_rows": self.raw_rows,
            "node_groups_released": self.node_groups, "node_groups_withheld": self.node_withheld,
        })
    }
}

async fn run_raw(ctx: &datafusion::prelude::SessionContext, sql: &str) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let batches = ctx.sql(sql).await?.collect().await?;
    let elapsed = started.elapsed();
    Ok((elapsed, batches.iter().map(|b| b.num_rows()).sum()))
}

async fn run_node(node: &Node, q: &pb::NodeQuery) -> (Duration, Result<pb::PartialResult, verbund_node::Refusal>) {
    let started = Instant::now();
    let outcome = node.handle(q).await;
    (started.elapsed(), outcome)
}

pub struct Setup {
    pub node: Node,
    pub raw: datafusion::prelude::SessionContext,
    /// Like `raw`, with verbund's functions and `patients_up_to` registered.
    pub raw_cap: datafusion::prelude::SessionContext,
    pub token: String,
}

pub async fn setup(pki: &verbund_tests::Pki, path: &Path) -> anyhow::Result<Setup> {
    setup_with(pki, path, verbund_tests::open_policy(5), None).await
}

/// Like [`setup`], with the node under `policy` (and, for the private profiles, `privacy`).
pub async fn setup_with(
    pki: &verbund_tests::Pki,
    path: &Path,
    policy: verbund_policies::Policy,
    privacy: Option<verbund_node::private::Privacy>,
) -> anyhow::Result<Setup> {
    let dataset = crate::net::dataset_config(crate::data::TABLE, path)?;
    let catalogue = Catalogue::open(&[dataset]).await?;
    let mut node = Node::new("bench-site", catalogue, policy, pki.verifier());
    if let Some(privacy) = privacy {
        node = node.with_privacy(privacy);
    }
    let raw = datafusion::prelude::SessionContext::new();
    let path_str = path.to_str().ok_or_else(|| anyhow::anyhow!("data path is not UTF-8"))?;
    raw.register_parquet(crate::data::TABLE, path_str, datafusion::prelude::ParquetReadOptions::default()).await?;
    let raw_cap = datafusion::prelude::SessionContext::new();
    verbund_query::functions::register_all(&raw_cap);
    raw_cap.register_udaf(verbund_query::capped::patients_up_to_udaf());
    raw_cap.register_parquet(crate::data::TABLE, path_str, datafusion::prelude::ParquetReadOptions::default()).await?;
    Ok(Setup { node, raw, raw_cap, token: pki.token() })
}

// `..Default::default()` keeps this compiling when the messages gain fields.
#[allow(clippy::needless_update)]
pub fn node_query(id: String, token: &str, request: pb::AggregateQuery) -> pb::NodeQuery {
    pb::NodeQuery {
        query_id: id,
        identity: Some(pb::Identity {
            researcher_token: token.to_string(),
            researcher: "alice".into(),
            project: verbund_tests::PROJECT.into(),
            ..Default::default()
        }),
        timeout_ms: 600_000,
        query: Some(request),
        ..Default::default()
    }
}

/// Which side of the comparison to time (one side alone is for profiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Both,
    Node,
    Raw,
}

/// Prints DataFusion's physical plans of the raw queries (to stderr).
pub async fn explain(setup: &Setup, q: &Query) -> anyhow::Result<()> {
    for sql in std::iter::once(&q.raw_sql).chain(&q.raw_k_sql).chain(&q.raw_cap_sql) {
        let batches = setup.raw_cap.sql(&format!("EXPLAIN {sql}")).await?.collect().await?;
        let text = arrow::util::pretty::pretty_format_batches(&batches)?;
        eprintln!("{}: {sql}\n{text}", q.id);
    }
    Ok(())
}

pub async fn measure(setup: &Setup, q: &Query, iterations: usize, side: Side) -> anyhow::Result<Figures> {
    let mut f = Figures {
        query: q.id,
        what: q.what,
        raw: vec![],
        raw_k: vec![],
        raw_cap: vec![],
        node: vec![],
        plan: vec![],
        refused: None,
        raw_rows: 0,
        node_groups: 0,
        node_withheld: 0,
    };
    let catalogue = setup.node.engine().catalogue().clone();
    let mut request = None;
    match verbund_coordinator::frontend::plan_sql(&q.node_sql, &catalogue).await {
        Ok(plan) => request = Some(plan.request),
        Err(e) => f.refused = Some(format!("coordinator front-end: {e}")),
    }
    let node_q = request.map(|r| node_query(format!("bench-{}", q.id), &setup.token, r));
    // Warm-up (and a check that the node answers at all).
    if let Some(nq) = &node_q {
        match run_node(&setup.node, nq).await.1 {
            Ok(p) => {
                f.node_groups = p.groups.len();
                f.node_withheld = p.withheld_groups;
            }
            Err(refusal) => f.refused = Some(format!("node: {refusal}")),
        }
    }
    let node_q = if f.refused.is_some() || side == Side::Raw { None } else { node_q };
    let (raw_sql, raw_k_sql, raw_cap_sql) = if side == Side::Node {
        (None, None, None)
    } else {
        (Some(&q.raw_sql), q.raw_k_sql.as_ref(), q.raw_cap_sql.as_ref())
    };
    if let Some(sql) = raw_sql {
        f.raw_rows = run_raw(&setup.raw, sql).await?.1;
    }
    if let Some(sql) = raw_k_sql {
        run_raw(&setup.raw, sql).await?;
    }
    if let Some(sql) = raw_cap_sql {
        run_raw(&setup.raw_cap, sql).await?;
    }
    for round in 0..iterations {
        for step in 0..4 {
            match (round + step) % 4 {
                0 => {
                    if let Some(nq) = &node_q {
                        let (d, outcome) = run_node(&setup.node, nq).await;
                        if let Err(refusal) = outcome {
                            anyhow::bail!("{}: the node refused in round {round}: {refusal}", q.id);
                        }
                        f.node.push(d);
                    }
                }
                1 => {
                    if let Some(sql) = raw_sql {
                        f.raw.push(run_raw(&setup.raw, sql).await?.0);
                    }
                }
                2 => {
                    if let Some(sql) = raw_k_sql {
                        f.raw_k.push(run_raw(&setup.raw, sql).await?.0);
                    }
                }
                _ => {
                    if let Some(sql) = raw_cap_sql {
                        f.raw_cap.push(run_raw(&setup.raw_cap, sql).await?.0);
                    }
                }
            }
        }
        if node_q.is_some() {
            let started = Instant::now();
            verbund_coordinator::frontend::plan_sql(&q.node_sql, &catalogue).await.map_err(anyhow::Error::msg)?;
            f.plan.push(started.elapsed());
        }
    }
    let show = |v: &[Duration]| if v.is_empty() { "-".to_string() } else { format!("{:.1}", median(v)) };
    eprintln!(
        "  {:<40} raw {:>7} ms   +exact {:>7} ms   +capped {:>7} ms   node {:>7} ms   {}",
        q.what,
        show(&f.raw),
        show(&f.raw_k),
        show(&f.raw_cap),
        show(&f.node),
        f.refused.as_deref().unwrap_or("")
    );
    Ok(f)
}

pub fn markdown(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| query | raw DataFusion ms (median / min) | raw + exact patient count per cell ms | raw + patients_up_to(patient_id, 5) per cell ms | node ms (median / min) | ratio node/raw (medians) | ratio (minima) | target ≤ 1.2 (medians) | coordinator planning ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let pair = |v: &[Duration]| {
        if v.is_empty() { "–".to_string() } else { format!("{:.1} / {:.1}", median(v), min(v)) }
    };
    for f in figures {
        let (ratio, ratio_min, verdict) = match &f.refused {
            Some(why) => ("–".to_string(), "–".to_string(), format!("not measured: {why}")),
            None if !f.measured() => ("–".to_string(), "–".to_string(), "one side only".to_string()),
            None => {
                let r = f.ratio();
                let m = min(&f.node) / min(&f.raw);
                (format!("{r:.2}"), format!("{m:.2}"), if r <= 1.2 { "met".into() } else { "missed".into() })
            }
        };
        let plan = if f.plan.is_empty() { "–".into() } else { format!("{:.2}", median(&f.plan)) };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.what,
            pair(&f.raw),
            pair(&f.raw_k),
            pair(&f.raw_cap),
            pair(&f.node),
            ratio,
            ratio_min,
            verdict,
            plan
        ));
    }
    out
}
