//! The verbund benchmark suite: `cargo bench -p verbund-bench [-- OPTIONS]`.
//!
//! 1. Node execution vs raw DataFusion on one generated Parquet file (10 million rows).
//! 2. Federated latency p50/p99 over mutual TLS on loopback for 1, 10 and 50 sites.
//! 3. Throughput with 64 concurrent researchers over 10 sites.
//! 4. Resident memory of a node running as an OS process of its own.
//! 5. The audit log: appends per second with fsync, and the latency it adds to a query.
//! 6. The privacy engine (`--only privacy`): utility and time of the dp profile.
//! 7. Clinical data (`--only clinical`): FHIR import throughput and peak memory, CCDL
//!    feasibility latency, on at least 100,000 generated patients.
//! 8. Models (`--only model`): a logistic model with 10 covariates across 10 sites of 100,000
//!    patients each, fitted through the coordinator; rounds, per-round times, and the same
//!    computation by `verbund_regression` in-process.
//!
//! Prints Markdown tables to stdout (progress to stderr) and writes the figures as JSON to
//! `bench/results/latest.json` (`quick.json` with `--quick`). See BENCHMARKS.md.

mod audit;
mod clinical;
mod data;
mod exec;
mod model;
mod net;
mod privacy;
mod sys;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "cargo bench -p verbund-bench [-- OPTIONS]

  --quick              a small smoke run (200k rows, few iterations, short load)
  --rows N             rows of the execution benchmark's dataset (default 10000000)
  --seed N             data seed (default 42)
  --iterations N       timed rounds per execution query (default 10)
  --queries N          sequential federated queries per site count (default 200)
  --site-rows N        rows per site in the network runs (default 20000)
  --researchers N      concurrent researchers in the throughput run (default 64)
  --seconds N          length of each throughput run (default 10)
  --audit-records N    records each appender appends in the audit runs (default 2000)
  --audit-runs N       Node::handle runs with and without the audit log (default 400)
  --patients N         patients of the clinical section (default 100000)
  --model-sites N      sites of the model section (default 10; --quick 3)
  --model-rows N       patients per site of the model section (default 100000; --quick 20000)
  --only LIST          comma-separated sections: exec, privacy, latency, load, audit, clinical,
                       model
                       (default: exec, latency, load, audit)
  --exec-filter TEXT   run only the execution queries whose id contains TEXT (e.g. b_grouped)
  --exec-side SIDE     both (default), node or raw: time one side only (for profiling)
  --explain            print DataFusion's physical plan of each raw execution query
  --data-dir DIR       where generated data is cached (default <target>/bench-data)
  --out FILE           results file (default bench/results/latest.json)";

struct Options {
    quick: bool,
    rows: usize,
    seed: u64,
    iterations: usize,
    queries: usize,
    warmup: usize,
    site_rows: usize,
    site_counts: Vec<usize>,
    researchers: usize,
    seconds: u64,
    audit_records: usize,
    audit_runs: usize,
    patients: usize,
    model_sites: usize,
    model_rows: usize,
    sections: Vec<String>,
    exec_filter: Option<String>,
    exec_side: exec::Side,
    explain: bool,
    data_dir: PathBuf,
    out: PathBuf,
}

fn default_data_dir() -> PathBuf {
    // The executable lives in <target>/release/deps/; cargo marks <target> with CACHEDIR.TAG.
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.ancestors().nth(3)
        && target.join("CACHEDIR.TAG").exists()
    {
        return target.join("bench-data");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data")
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Options {
            quick,
            rows: if quick { 200_000 } else { 10_000_000 },
            seed: 42,
            iterations: if quick { 2 } else { 10 },
            queries: if quick { 20 } else { 200 },
            warmup: if quick { 5 } else { 20 },
            site_rows: 20_000,
            site_counts: vec![1, 10, 50],
            researchers: 64,
            seconds: if quick { 3 } else { 10 },
            audit_records: if quick { 200 } else { 2000 },
            audit_runs: if quick { 40 } else { 400 },
            patients: if quick { 5_000 } else { 100_000 },
            model_sites: if quick { 3 } else { 10 },
            model_rows: if quick { 20_000 } else { 100_000 },
            sections: vec!["exec".into(), "latency".into(), "load".into(), "audit".into()],
            exec_filter: None,
            exec_side: exec::Side::Both,
            explain: false,
            data_dir: default_data_dir(),
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(if quick {
                "quick.json"
            } else {
                "latest.json"
            }),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().with_context(|| format!("{arg} needs a value\n\n{USAGE}"));
            match arg.as_str() {
                // cargo passes --bench to harness = false targets.
                "--bench" | "--quick" => {}
                "--explain" => o.explain = true,
                "--exec-side" => {
                    o.exec_side = match value()?.as_str() {
                        "both" => exec::Side::Both,
                        "node" => exec::Side::Node,
                        "raw" => exec::Side::Raw,
                        other => bail!("--exec-side is both, node or raw, not '{other}'"),
                    }
                }
                "--rows" => o.rows = value()?.parse()?,
                "--seed" => o.seed = value()?.parse()?,
                "--iterations" => o.iterations = value()?.parse()?,
                "--queries" => o.queries = value()?.parse()?,
                "--site-rows" => o.site_rows = value()?.parse()?,
                "--researchers" => o.researchers = value()?.parse()?,
                "--seconds" => o.seconds = value()?.parse()?,
                "--audit-records" => o.audit_records = value()?.parse()?,
                "--audit-runs" => o.audit_runs = value()?.parse()?,
                "--patients" => o.patients = value()?.parse()?,
                "--model-sites" => o.model_sites = value()?.parse()?,
                "--model-rows" => o.model_rows = value()?.parse()?,
                "--only" => o.sections = value()?.split(',').map(|s| s.trim().to_string()).collect(),
                "--exec-filter" => o.exec_filter = Some(value()?.clone()),
                "--data-dir" => o.data_dir = PathBuf::from(value()?),
                "--out" => o.out = PathBuf::from(value()?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument '{other}'\n\n{USAGE}"),
            }
        }
        for s in &o.sections {
            if !["exec", "privacy", "latency", "load", "audit", "clinical", "model"].contains(&s.as_str()) {
                bail!("unknown section '{s}' (exec, privacy, latency, load, audit, clinical, model)");
            }
        }
        if o.rows == 0
            || o.iterations == 0
            || o.queries == 0
            || o.site_rows == 0
            || o.researchers == 0
            || o.audit_records == 0
            || o.audit_runs == 0
            || o.patients == 0
            || o.model_sites == 0
            || o.model_rows == 0
        {
            bail!("counts must be at least 1");
        }
        Ok(o)
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(clinical::IMPORT_CHILD_ARG) {
        return match clinical::import_child_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("import process: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(clinical::PROFILE_ARG) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
        return match runtime.map_err(anyhow::Error::from).and_then(|r| r.block_on(clinical::profile_main(&args[1..]))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("profile: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(net::CHILD_ARG) {
        return match net::child_main(args.get(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("node process: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = Options::parse(&args).and_then(|options| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(run(options))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let machine = sys::Machine::detect();
    let mut report = String::new();
    report.push_str("# verbund benchmarks\n\n");
    report.push_str(&machine.markdown());
    println!("{report}");
    let mut results = json!({
        "machine": machine.to_json(),
        "options": {
            "quick": o.quick, "rows": o.rows, "seed": o.seed, "iterations": o.iterations,
            "queries_per_site_count": o.queries, "warmup_queries": o.warmup, "rows_per_site": o.site_rows,
            "researchers": o.researchers, "seconds_per_load_run": o.seconds,
            "audit_records_per_appender": o.audit_records, "audit_handle_runs": o.audit_runs,
        },
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    let pki = verbund_tests::Pki::new();

    if o.runs("exec") {
        let section = exec_section(&o, &pki).await?;
        println!("{}", section.0);
        report.push_str(&section.0);
        results["execution"] = section.1;
    }

    if o.runs("clinical") {
        std::fs::create_dir_all(&o.data_dir)?;
        let section = clinical::section(&o.data_dir, o.patients, o.seed, o.queries).await?;
        println!("{}", section.0);
        report.push_str(&section.0);
        results["clinical"] = section.1;
    }

    if o.runs("model") {
        let repeats = if o.quick { 2 } else { 5 };
        let section = model::section(o.model_sites, o.model_rows, o.seed, repeats, machine.cores).await?;
        println!("{}", section.0);
        report.push_str(&section.0);
        results["model"] = section.1;
    }

    if o.runs("privacy") {
        let section = privacy_section(&o, &pki).await?;
        println!("{}", section.0);
        report.push_str(&section.0);
        results["privacy"] = section.1;
    }

    // One policy for the network runs, as a hospital might set it: the shipped defaults
    // (policies/examples/default.toml).
    let policy = net::PolicyValues { min_cell_size: 5, max_groups: 10_000, max_concurrent_queries: 8 };
    let max_sites = o.site_counts.iter().copied().max().unwrap_or(1);
    let files = if o.runs("latency") || o.runs("load") {
        eprintln!("site data: {} sites × {} rows", max_sites, o.site_rows);
        net::site_files(&o.data_dir, max_sites, o.site_rows, o.seed)?
    } else {
        vec![]
    };
    let child_dir = tempfile::tempdir()?;
    let mut latencies = Vec::new();
    let mut loads = Vec::new();
    for &n in &o.site_counts {
        let ten = n == 10;
        if !(o.runs("latency") || (ten && o.runs("load"))) {
            continue;
        }
        eprintln!("network of {n} sites{}", if ten { " (site-00 as a separate process)" } else { "" });
        let child_dir = ten.then_some(child_dir.path());
        let (network, child) = net::start_network(&files[..n], policy, child_dir).await?;
        // Let the node process settle after startup and attach before the idle reading.
        let idle = match &child {
            Some(c) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Some(c.memory()?)
            }
            None => None,
        };
        if o.runs("latency") {
            for query in net::LATENCY_QUERIES {
                let mut l = net::latency(&network, n, query, o.warmup, o.queries).await?;
                if query.0 == "light" {
                    let f = net::latency_flight_sql(&network, n, query.1, o.warmup, o.queries).await?;
                    eprintln!(
                        "  light through Flight SQL: p50 {:.2} ms, p99 {:.2} ms",
                        sys::percentile(&f.samples, 50.0),
                        sys::percentile(&f.samples, 99.0)
                    );
                    l.flight_sql = Some(f);
                }
                l.local_medians_ms = net::local_medians(&network, &files[..n], policy, query.1, 50).await?;
                eprintln!(
                    "  {}: p50 {:.2} ms, p99 {:.2} ms, slowest local median {:.2} ms",
                    query.0,
                    l.p50(),
                    l.p99(),
                    l.slowest_local().unwrap_or(f64::NAN)
                );
                latencies.push(l);
            }
        }
        if ten && o.runs("load") {
            eprintln!("  load: {} researchers for {} s, {}", o.researchers, o.seconds, policy.effective());
            let mut t =
                net::throughput(&network, n, policy, o.researchers, Duration::from_secs(o.seconds), child.as_ref())
                    .await?;
            t.node_memory_idle = idle;
            eprintln!("  {:.1} complete answers/s, {} partial", t.complete_per_second(), t.partial);
            loads.push(t);
        }
        drop(child);
        drop(network);
    }
    if o.runs("load") {
        // The same load against nodes that accept as many queries as there are researchers.
        let raised = net::PolicyValues { max_concurrent_queries: o.researchers as u32, ..policy };
        eprintln!("network of 10 sites, max_concurrent_queries = {}", raised.max_concurrent_queries);
        let n = 10.min(files.len());
        let (network, child) = net::start_network(&files[..n], raised, Some(child_dir.path())).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = child.as_ref().map(net::NodeChild::memory).transpose()?;
        let mut t =
            net::throughput(&network, n, raised, o.researchers, Duration::from_secs(o.seconds), child.as_ref()).await?;
        t.node_memory_idle = idle;
        eprintln!("  {:.1} complete answers/s, {} partial", t.complete_per_second(), t.partial);
        loads.push(t);
        drop(child);
        drop(network);
    }

    if !latencies.is_empty() {
        let text = format!(
            "\n## Federated latency (sequential, one researcher, mutual TLS on loopback, {} rows per site)\n\nQueries: typical `{}`; light `{}`\n\n{}",
            o.site_rows,
            net::SQL,
            net::LIGHT_SQL,
            net::latency_markdown(&latencies, machine.cores)
        );
        println!("{text}");
        report.push_str(&text);
        results["latency"] = Value::Array(latencies.iter().map(net::Latency::to_json).collect());
    }
    if !loads.is_empty() {
        let text = format!(
            "\n## Throughput (10 sites, {} concurrent researchers, each with its own TLS channel)\n\n{}\n\n## Node process memory (site-00, a separate OS process)\n\n{}",
            o.researchers,
            net::throughput_markdown(&loads),
            net::memory_markdown(&loads)
        );
        println!("{text}");
        report.push_str(&text);
        results["throughput"] = Value::Array(loads.iter().map(net::Throughput::to_json).collect());
    }
    if o.runs("audit") {
        eprintln!("audit log: appends and the latency it adds ({} rows, under {})", o.site_rows, o.data_dir.display());
        let plan = audit::Plan {
            data_dir: &o.data_dir,
            rows: o.site_rows,
            seed: o.seed,
            records: o.audit_records,
            appenders: 64,
            runs: o.audit_runs,
        };
        let figures = audit::run(&pki, &plan).await?;
        let text = format!(
            "\n## Audit log (appends with fsync, and the latency a node's records add)\n\n{}",
            figures.markdown()
        );
        println!("{text}");
        report.push_str(&text);
        results["audit"] = figures.to_json();
    }
    let total = started.elapsed();
    println!("\nTotal time: {:.0} s", total.as_secs_f64());
    results["total_seconds"] = json!(sys::round(total.as_secs_f64(), 1));
    results["markdown"] = json!(report);
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    println!("Results: {}", o.out.display());
    Ok(())
}

async fn privacy_section(o: &Options, pki: &verbund_tests::Pki) -> anyhow::Result<(String, Value)> {
    // The dp plan sorts each patient's rows: a smaller file keeps the section to minutes.
    let rows = o.rows.min(1_000_000);
    let (path, _) = data::cached(&o.data_dir, rows, o.seed)?;
    let dir = tempfile::tempdir()?;
    let setup = privacy::setup(pki, &path, dir.path()).await?;
    let timing = privacy::timing(&setup, o.iterations).await?;
    let questions = if o.quick { 20 } else { 100 };
    let utility = privacy::utility(&setup, questions, o.seed).await?;
    let text = format!(
        "\n## Differential privacy: the node's time and the answers' utility ({rows} rows, {} timed rounds)\n\n{}",
        o.iterations,
        privacy::markdown(&timing, &utility, questions)
    );
    Ok((text, json!({ "rows": rows, "section": privacy::json(&timing, &utility) })))
}

async fn exec_section(o: &Options, pki: &verbund_tests::Pki) -> anyhow::Result<(String, Value)> {
    let generated_at = Instant::now();
    eprintln!("execution dataset: {} rows, seed {} (cached under {})", o.rows, o.seed, o.data_dir.display());
    let (path, generated) = data::cached(&o.data_dir, o.rows, o.seed)?;
    let generation_s = generated_at.elapsed().as_secs_f64();
    if generated {
        eprintln!("  generated in {generation_s:.1} s: {}", path.display());
    }
    let size_mib = std::fs::metadata(&path)?.len() as f64 / 1024.0 / 1024.0;
    let setup = exec::setup(pki, &path).await?;
    let mut figures = Vec::new();
    for q in exec::queries() {
        if o.exec_filter.as_ref().is_some_and(|f| !q.id.contains(f.as_str())) {
            continue;
        }
        if o.explain {
            exec::explain(&setup, &q).await?;
        }
        figures.push(exec::measure(&setup, &q, o.iterations, o.exec_side).await?);
    }
    let text = format!(
        "\n## Node execution vs raw DataFusion ({} rows, {:.0} MiB Parquet, {} timed rounds after one warm-up, interleaved)\n\n{}",
        o.rows,
        size_mib,
        o.iterations,
        exec::markdown(&figures)
    );
    let value = json!({
        "rows": o.rows, "parquet_mib": sys::round(size_mib, 1), "generated_now": generated,
        "generation_seconds": if generated { json!(sys::round(generation_s, 1)) } else { Value::Null },
        "queries": figures.iter().map(exec::Figures::to_json).collect::<Vec<_>>(),
    });
    Ok((text, value))
}
