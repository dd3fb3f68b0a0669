//! What the audit log costs (issue 11): appends per second with fsync, by one appender and by
//! many at once (group commit), and the latency a node's two records (received, answered)
//! add to a query.
//!
//! The logs live in temporary directories under the data directory, on the disk where the
//! generated data lives (where a site's data and log would be). The query runs on data from
//! the execution benchmark's generator ([`crate::data`]), at the size of one site of the
//! network runs, so that the query itself is short and the log's share shows.

use crate::sys::{median, ms, percentile, round};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verbund_audit::{AuditConfig, AuditLog, AuditSettings, CommitHook, Decision, Record, Requester, SigningKey};
use verbund_node::{Catalogue, Node};

/// One append run: `appenders` tasks appending `per_appender` records each, all at once.
pub struct Appends {
    pub appenders: usize,
    pub records: usize,
    pub elapsed: Duration,
    /// Each append's wait, from the call to its acknowledgement (written and synced).
    pub latencies: Vec<Duration>,
    /// Each group commit's fsync.
    pub fsyncs: Vec<Duration>,
    pub bytes: u64,
}

impl Appends {
    pub fn per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    pub fn records_per_fsync(&self) -> f64 {
        self.records as f64 / self.fsyncs.len().max(1) as f64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "appenders": self.appenders, "records": self.records,
            "seconds": round(self.elapsed.as_secs_f64(), 3),
            "appends_per_second": round(self.per_second(), 1),
            "append_latency_p50_ms": round(median(&self.latencies), 3),
            "append_latency_p99_ms": round(percentile(&self.latencies, 99.0), 3),
            "group_commits": self.fsyncs.len(),
            "records_per_fsync": round(self.records_per_fsync(), 2),
            "fsync_p50_ms": round(median(&self.fsyncs), 3),
            "fsync_p99_ms": round(percentile(&self.fsyncs, 99.0), 3),
            "mean_record_bytes": round(self.bytes as f64 / self.records.max(1) as f64, 0),
        })
    }
}

/// `Node::handle` of one query, without and with the audit log.
pub struct Added {
    pub sql: &'static str,
    pub rows: usize,
    pub without: Vec<Duration>,
    pub with: Vec<Duration>,
    /// Per round, with minus without (the two run back to back, in alternating order).
    pub paired: Vec<f64>,
}

impl Added {
    pub fn to_json(&self) -> Value {
        let mut paired = self.paired.clone();
        paired.sort_by(f64::total_cmp);
        json!({
            "sql": self.sql, "rows": self.rows, "runs": self.with.len(),
            "without_audit_p50_ms": round(median(&self.without), 3),
            "without_audit_p99_ms": round(percentile(&self.without, 99.0), 3),
            "with_audit_p50_ms": round(median(&self.with), 3),
            "with_audit_p99_ms": round(percentile(&self.with, 99.0), 3),
            "added_p50_ms": round(median(&self.with) - median(&self.without), 3),
            "added_p99_ms": round(percentile(&self.with, 99.0) - percentile(&self.without, 99.0), 3),
            "paired_difference_median_ms": round(paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN), 3),
        })
    }
}

/// The records a node writes for one query: what it received, and what it answered.
struct Sample {
    received: Record,
    answered: Record,
}

impl Sample {
    fn record(&self, i: usize) -> Record {
        let mut record = if i.is_multiple_of(2) { self.received.clone() } else { self.answered.clone() };
        record.query_id = format!("bench-{}", i / 2);
        record.time_ms = verbund_audit::now_ms();
        record
    }
}

/// Collects every group commit's fsync time.
fn fsync_hook() -> (CommitHook, Arc<Mutex<Vec<Duration>>>) {
    let fsyncs = Arc::new(Mutex::new(Vec::new()));
    let sink = fsyncs.clone();
    (
        Arc::new(move |c: &verbund_audit::CommitInfo| sink.lock().unwrap_or_else(|e| e.into_inner()).push(c.fsync)),
        fsyncs,
    )
}

async fn appends(dir: &Path, sample: &Arc<Sample>, appenders: usize, per_appender: usize) -> anyhow::Result<Appends> {
    let log_dir = tempfile::Builder::new().prefix("audit-appends-").tempdir_in(dir)?;
    let (key, _) = SigningKey::generate_in_memory()?;
    let (hook, fsyncs) = fsync_hook();
    let mut config = AuditConfig::new(log_dir.path());
    config.on_commit = Some(hook);
    let log = Arc::new(tokio::task::spawn_blocking(move || AuditLog::open(config, key)).await??);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(appenders);
    for a in 0..appenders {
        let (log, sample) = (log.clone(), sample.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_appender);
            for i in 0..per_appender {
                let record = sample.record(a * per_appender + i);
                let t = Instant::now();
                log.append(&record).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(appenders * per_appender);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    log.close().await?;
    let fsyncs = std::mem::take(&mut *fsyncs.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Appends { appenders, records: appenders * per_appender, elapsed, latencies, fsyncs, bytes: stats.bytes })
}

pub struct Figures {
    pub dir: String,
    pub filesystem: String,
    pub appends: Vec<Appends>,
    pub added: Added,
}

impl Figures {
    pub fn to_json(&self) -> Value {
        json!({
            "log_dir": self.dir, "filesystem": self.filesystem,
            "appends": self.appends.iter().map(Appends::to_json).collect::<Vec<_>>(),
            "query_latency": self.added.to_json(),
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Logs in a temporary directory under `{}` ({}).\n\n\
             | appenders | records | seconds | appends/s | append latency p50 / p99 ms | group commits | records per fsync | fsync p50 / p99 ms | bytes per record |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.dir, self.filesystem
        );
        for a in &self.appends {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.2} / {:.2} | {} | {:.1} | {:.2} / {:.2} | {:.0} |\n",
                a.appenders,
                a.records,
                a.elapsed.as_secs_f64(),
                a.per_second(),
                median(&a.latencies),
                percentile(&a.latencies, 99.0),
                a.fsyncs.len(),
                a.records_per_fsync(),
                median(&a.fsyncs),
                percentile(&a.fsyncs, 99.0),
                a.bytes as f64 / a.records.max(1) as f64,
            ));
        }
        let q = &self.added;
        let mut paired = q.paired.clone();
        paired.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "\n`Node::handle` of `{}` on {} rows, {} runs each, without and with the audit log (two records, each \
             fsynced before `handle` returns), back to back in alternating order:\n\n\
             | node | p50 ms | p99 ms |\n|---|---|---|\n\
             | without audit log | {:.3} | {:.3} |\n\
             | with audit log | {:.3} | {:.3} |\n\
             | added by the log | {:.3} | {:.3} |\n\n\
             Median of the per-round differences (with − without): {:.3} ms.\n",
            q.sql,
            q.rows,
            q.with.len(),
            median(&q.without),
            percentile(&q.without, 99.0),
            median(&q.with),
            percentile(&q.with, 99.0),
            median(&q.with) - median(&q.without),
            percentile(&q.with, 99.0) - percentile(&q.without, 99.0),
            paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN),
        ));
        out
    }
}

/// What the section measures, and how much of it.
pub struct Plan<'a> {
    pub data_dir: &'a Path,
    pub rows: usize,
    pub seed: u64,
    /// Records each appender appends.
    pub records: usize,
    pub appenders: usize,
    /// Timed `handle` calls per node.
    pub runs: usize,
}

pub async fn run(pki: &verbund_tests::Pki, plan: &Plan<'_>) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(plan.data_dir).with_context(|| format!("cannot create {}", plan.data_dir.display()))?;
    let (path, _) = crate::data::cached(plan.data_dir, plan.rows, plan.seed)?;
    let dataset = crate::net::dataset_config(crate::data::TABLE, &path)?;
    let open = || async { Catalogue::open(std::slice::from_ref(&dataset)).await };
    let plain = Node::new("bench-site", open().await?, verbund_tests::open_policy(5), pki.verifier());
    let settings_dir = tempfile::Builder::new().prefix("audit-node-").tempdir_in(plan.data_dir)?;
    let audited = Node::new("bench-site", open().await?, verbund_tests::open_policy(5), pki.verifier());
    let settings = AuditSettings::in_dir(settings_dir.path());
    let hook = audited.audit_metrics().on_commit();
    let log = Arc::new(tokio::task::spawn_blocking(move || settings.open(Some(hook))).await??);
    let audited = audited.with_audit(log.clone(), Some("127.0.0.1".into()));

    let sql = crate::net::LIGHT_SQL;
    let request = verbund_coordinator::frontend::plan_sql(sql, &plain.engine().catalogue())
        .await
        .map_err(anyhow::Error::msg)?
        .request;
    let token = pki.token();
    let query = |id: String| crate::exec::node_query(id, &token, request.clone());

    // The records of the append runs: what the audited node writes for this query.
    let answer = audited.handle(&query("sample".into())).await.map_err(|r| anyhow::anyhow!("refused: {r}"))?;
    let sample = {
        let who = Requester {
            subject: "alice".into(),
            project: Some(verbund_tests::PROJECT.into()),
            roles: vec!["researcher".into()],
        };
        let typed = serde_json::to_value(&request)?;
        let received = Record::new("bench-site", "", Decision::Received, who, typed).with_peer("127.0.0.1");
        let released = prost::Message::encode_to_vec(&answer);
        let answered = Record { decision: Decision::Answered, ..received.clone() }
            .with_release(&released, answer.groups.len() as u64, u64::from(answer.withheld_groups))
            .with_duration(Duration::from_millis(2));
        Arc::new(Sample { received, answered })
    };

    let mut runs = Vec::new();
    for appenders in [1, plan.appenders] {
        let a = appends(plan.data_dir, &sample, appenders, plan.records).await?;
        eprintln!(
            "  {appenders} appender(s): {} records in {:.2} s, {:.0} appends/s, {:.1} records per fsync, fsync p50 {:.2} ms",
            a.records,
            a.elapsed.as_secs_f64(),
            a.per_second(),
            a.records_per_fsync(),
            median(&a.fsyncs)
        );
        runs.push(a);
    }

    // Warm-up, then both nodes in turn, the order alternating from round to round.
    for i in 0..10 {
        plain.handle(&query(format!("warm-plain-{i}"))).await.map_err(|r| anyhow::anyhow!("refused: {r}"))?;
        audited.handle(&query(format!("warm-audit-{i}"))).await.map_err(|r| anyhow::anyhow!("refused: {r}"))?;
    }
    let mut added = Added { sql, rows: plan.rows, without: vec![], with: vec![], paired: vec![] };
    for i in 0..plan.runs {
        let mut pair = [Duration::ZERO; 2];
        for step in 0..2 {
            let audit = (i + step) % 2 == 1;
            let node = if audit { &audited } else { &plain };
            let q = query(format!("bench-{i}-{}", if audit { "audit" } else { "plain" }));
            let started = Instant::now();
            node.handle(&q).await.map_err(|r| anyhow::anyhow!("refused in run {i}: {r}"))?;
            pair[usize::from(audit)] = started.elapsed();
        }
        added.without.push(pair[0]);
        added.with.push(pair[1]);
        added.paired.push(ms(pair[1]) - ms(pair[0]));
    }
    log.close().await?;
    eprintln!(
        "  Node::handle p50 {:.3} ms without the audit log, {:.3} ms with it",
        median(&added.without),
        median(&added.with)
    );
    Ok(Figures {
        dir: plan.data_dir.display().to_string(),
        filesystem: crate::sys::filesystem_of(plan.data_dir),
        appends: runs,
        added,
    })
}
