//! Clinical data (issue 13) on a generated population of at least 100,000 patients:
//! `verbund import` throughput and peak memory (the import runs as a process of its own, so
//! its peak resident memory is its own), and the latency of MII feasibility queries (CCDL)
//! through the coordinator to one node serving every imported patient.

use crate::sys::round;
use arrow::array::Array;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;
use verbund_proto::v1 as pb;
use verbund_tests::{Network, with_token};

/// Re-runs this executable as an import process: `<arg> <input> <out> <memory-mb>`.
pub const IMPORT_CHILD_ARG: &str = "__verbund-bench-import";

/// Profiles the CCDL questions on an existing import, for finding where the time goes:
/// `<arg> <imported dir> [queries]` prints each question's latency and, with
/// `VERBUND_PROFILE_SQL` set, runs that SQL with EXPLAIN ANALYZE on the imported datasets.
pub const PROFILE_ARG: &str = "__verbund-bench-ccdl";

pub async fn profile_main(args: &[String]) -> anyhow::Result<()> {
    let dir = PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!("usage: {PROFILE_ARG} DIR [QUERIES]"))?);
    let queries = args.get(1).map(|q| q.parse()).transpose()?.unwrap_or(50);
    if let Ok(sql) = std::env::var("VERBUND_PROFILE_SQL") {
        let catalogue = verbund_node::Catalogue::open(&verbund_tests::fhir_datasets(&dir)).await?;
        let ctx = catalogue.session().clone();
        // Statements before the last (e.g. SET datafusion.execution.parquet.pushdown_filters = true).
        let mut statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
        let sql = statements.pop().unwrap_or_default().to_string();
        for setting in statements {
            ctx.sql(setting).await?.collect().await?;
        }
        for _ in 0..3 {
            let started = Instant::now();
            let batches = ctx.sql(&sql).await?.collect().await?;
            eprintln!(
                "{:.2} ms, {} rows",
                started.elapsed().as_secs_f64() * 1000.0,
                batches.iter().map(|b| b.num_rows()).sum::<usize>()
            );
        }
        let explained = ctx.sql(&format!("EXPLAIN ANALYZE {sql}")).await?.collect().await?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&explained)?);
        return Ok(());
    }
    ccdl_latency(&dir, 5, queries).await?;
    Ok(())
}

/// Patients of `verbund_synth::generate` at scale 1 (6000 + 3000 + 1500).
const PATIENTS_AT_SCALE_1: f64 = 10_500.0;

pub struct Export {
    pub dir: PathBuf,
    pub patients: usize,
    pub resources: usize,
    pub bytes: u64,
}

/// The population as gzip NDJSON (as a Bulk Data export), at least `patients` patients.
pub fn export(dir: &Path, patients: usize, seed: u64) -> anyhow::Result<Export> {
    let scale = (patients as f64 / PATIENTS_AT_SCALE_1).max(0.01);
    let sites = verbund_synth::generate(seed, scale)?;
    let count = |table: &str| -> usize {
        sites.iter().flat_map(|s| &s.tables).filter(|(name, _)| name == table).map(|(_, b)| b.num_rows()).sum()
    };
    let patients = count("patients");
    let out = dir.join(format!("fhir-{patients}-{seed}"));
    let _ = std::fs::remove_dir_all(&out);
    let written = verbund_synth::fhir::write_fhir(&out, &sites, verbund_synth::fhir::FhirLayout::NdjsonGzip)?;
    let resources = written.iter().map(|w| w.resources).sum();
    let bytes = written.iter().flat_map(|w| &w.files).filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    Ok(Export { dir: out, patients, resources, bytes })
}

pub struct ImportFigures {
    pub resources: u64,
    pub seconds: f64,
    pub peak_rss_mb: f64,
    pub issues: u64,
}

impl ImportFigures {
    pub fn per_second(&self) -> f64 {
        self.resources as f64 / self.seconds
    }
}

/// Imports `input` into `out` in a process of its own.
pub fn import_in_child(input: &Path, out: &Path, memory_mb: usize) -> anyhow::Result<ImportFigures> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg(IMPORT_CHILD_ARG)
        .arg(input)
        .arg(out)
        .arg(memory_mb.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        anyhow::bail!("the import process failed ({})", output.status);
    }
    let figures: Value = serde_json::from_slice(&output.stdout)?;
    let number = |k: &str| figures[k].as_f64().ok_or_else(|| anyhow::anyhow!("the import process did not report {k}"));
    Ok(ImportFigures {
        resources: number("resources")? as u64,
        seconds: number("seconds")?,
        peak_rss_mb: number("peak_rss_kb")? / 1024.0,
        issues: number("issues")? as u64,
    })
}

/// The import process: imports, then prints its figures as JSON on stdout.
pub fn import_child_main(args: &[String]) -> anyhow::Result<()> {
    let [input, out, memory_mb] = args else { anyhow::bail!("{IMPORT_CHILD_ARG} needs <input> <out> <memory-mb>") };
    let mut options = verbund_fhir::ImportOptions::new(vec![input.into()], out.into());
    options.memory_mb = memory_mb.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let summary = runtime.block_on(verbund_fhir::import(&options))?;
    let seconds = started.elapsed().as_secs_f64();
    let resources: u64 = summary.resources.values().map(|c| c.read).sum();
    let peak = summary.peak_rss_kb.or_else(verbund_fhir::peak_rss_kb).unwrap_or(0);
    println!("{}", json!({"resources": resources, "seconds": seconds, "peak_rss_kb": peak, "issues": summary.issues}));
    Ok(())
}

/// The feasibility questions timed: (name, CCDL).
pub fn questions() -> Vec<(&'static str, String)> {
    let criterion = |context: &str, system: &str, code: &str, extra: &str| {
        format!(
            r#"{{"context": {{"code": "{context}", "system": "fdpg.mii.cds", "version": "1.0.0", "display": ""}},
                "termCodes": [{{"code": "{code}", "system": "{system}", "display": ""}}]{extra}}}"#
        )
    };
    let icd = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
    let women = criterion(
        "Patient",
        "http://snomed.info/sct",
        "263495000",
        r#", "valueFilter": {"type": "concept", "selectedConcepts": [{"code": "female", "system": "http://hl7.org/fhir/administrative-gender", "display": ""}]}"#,
    );
    let hba1c = criterion(
        "Laboruntersuchung",
        "http://loinc.org",
        "4548-4",
        r#", "valueFilter": {"type": "quantity-comparator", "comparator": "gt", "value": 7.5, "unit": {"code": "%", "display": "%"}},
            "timeRestriction": {"afterDate": "2015-01-01", "beforeDate": "2025-12-31"}"#,
    );
    let serum_for_t2d = criterion(
        "Specimen",
        "http://snomed.info/sct",
        "119364003",
        &format!(
            r#", "attributeFilters": [{{"type": "reference", "attributeCode": {{"code": "festgestellteDiagnose", "system": "http://hl7.org/fhir/StructureDefinition", "display": ""}},
                "criteria": [{}]}}]"#,
            criterion("Diagnose", icd, "E11", "")
        ),
    );
    let document = |inclusion: &[&str], exclusion: &[&str]| {
        let groups = |g: &[&str]| g.iter().map(|c| format!("[{c}]")).collect::<Vec<_>>().join(",");
        let mut d = format!(r#"{{"version": "2", "inclusionCriteria": [{}]"#, groups(inclusion));
        if !exclusion.is_empty() {
            d.push_str(&format!(r#", "exclusionCriteria": [{}]"#, groups(exclusion)));
        }
        d.push('}');
        d
    };
    vec![
        ("one diagnosis (E11 and subcodes)", document(&[&criterion("Diagnose", icd, "E11", "")], &[])),
        (
            "women 65+ with E11 (example)",
            include_str!("../../../ccdl/examples/women-with-type-2-diabetes-65-plus.json").to_string(),
        ),
        ("E11 and HbA1c > 7.5 % in a window", document(&[&criterion("Diagnose", icd, "E11", ""), &hba1c], &[])),
        ("women without a serum specimen for E11", document(&[&women], &[&serum_for_t2d])),
    ]
}

pub struct Latency {
    pub name: &'static str,
    /// Asked again: the node answers the criteria from its cache.
    pub samples_ms: Vec<f64>,
    pub site_ms: Vec<f64>,
    /// Asked with the node's criterion cache emptied first: every criterion is computed.
    pub cold_ms: Vec<f64>,
    pub cold_site_ms: Vec<f64>,
    /// Cold, with the node's criteria index turned off: every criterion by DataFusion scans.
    pub scans_ms: Vec<f64>,
    pub patients: Option<i64>,
}

/// The node's in-memory criteria index: the first question on freshly loaded data (which
/// builds it) and the memory it holds after every question.
pub struct IndexFigures {
    pub first_question_ms: f64,
    pub bytes: usize,
}

impl Latency {
    pub fn to_json(&self) -> Value {
        json!({
            "question": self.name, "queries": self.samples_ms.len(),
            "p50_ms": round(percentile(&self.samples_ms, 50.0), 2), "p99_ms": round(percentile(&self.samples_ms, 99.0), 2),
            "site_p50_ms": round(percentile(&self.site_ms, 50.0), 2), "site_p99_ms": round(percentile(&self.site_ms, 99.0), 2),
            "cold_p50_ms": round(percentile(&self.cold_ms, 50.0), 2), "cold_p99_ms": round(percentile(&self.cold_ms, 99.0), 2),
            "cold_site_p50_ms": round(percentile(&self.cold_site_ms, 50.0), 2),
            "cold_site_p99_ms": round(percentile(&self.cold_site_ms, 99.0), 2),
            "scans_p50_ms": round(percentile(&self.scans_ms, 50.0), 2), "scans_p99_ms": round(percentile(&self.scans_ms, 99.0), 2),
            "patients": self.patients,
        })
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

/// One node serving the imported datasets under the research default (dp), the coordinator
/// in-process over mutual TLS; each question asked `warmup + queries` times on one channel.
pub async fn ccdl_latency(out: &Path, warmup: usize, queries: usize) -> anyhow::Result<(Vec<Latency>, IndexFigures)> {
    let catalogue = verbund_node::Catalogue::open(&verbund_tests::fhir_datasets(out)).await?;
    let mut policy = verbund_policies::Policy::default().allowing(verbund_tests::PROJECT);
    policy.budget.epsilon = 1e9;
    policy.budget.delta = 1.0;
    let mut network = Network::start(&["site-a"]).await;
    let node = std::sync::Arc::new(network.node("site-a", catalogue, policy));
    network.add_node(node.clone()).await;
    let mut client = network.client().await;
    let token = network.pki.token();
    let ask = |ccdl: String| {
        let request = pb::ResearchQuery { ccdl, project: verbund_tests::PROJECT.into(), ..Default::default() };
        with_token(request, &token)
    };
    let started = Instant::now();
    let first = questions().into_iter().next().map(|(_, ccdl)| ccdl).unwrap_or_default();
    client.query(ask(first)).await?;
    let first_question_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut out = Vec::new();
    for (name, ccdl) in questions() {
        let mut l = Latency {
            name,
            samples_ms: Vec::new(),
            site_ms: Vec::new(),
            cold_ms: Vec::new(),
            cold_site_ms: Vec::new(),
            scans_ms: Vec::new(),
            patients: None,
        };
        // Cold first (every criterion computed, as for a question the node has not seen on
        // this data), then repeated (criteria from the node's cache), then cold without the
        // criteria index.
        for phase in [Phase::Cold, Phase::Repeated, Phase::Scans] {
            node.engine().use_criteria_index(phase != Phase::Scans);
            let cold = phase != Phase::Repeated;
            for i in 0..warmup + queries {
                if cold {
                    node.engine().forget_criteria();
                }
                let started = Instant::now();
                let response = client.query(ask(ccdl.clone())).await?.into_inner();
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                if response.sites.iter().any(|s| s.outcome() != pb::SiteOutcome::Answered) {
                    anyhow::bail!("{name}: {:?}", response.sites);
                }
                if i >= warmup {
                    let site = response.sites.iter().map(|s| s.elapsed_ms);
                    match phase {
                        Phase::Cold => (l.cold_ms.push(elapsed), l.cold_site_ms.extend(site)),
                        Phase::Repeated => (l.samples_ms.push(elapsed), l.site_ms.extend(site)),
                        Phase::Scans => (l.scans_ms.push(elapsed), ()),
                    };
                }
                if i == 0 && phase == Phase::Repeated {
                    let batch = verbund_tests::decode(&response.arrow_ipc)?;
                    let column = batch.column(0);
                    l.patients = (batch.num_rows() > 0 && column.is_valid(0))
                        .then(|| column.as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
                        .flatten();
                }
            }
        }
        eprintln!(
            "  {name}: cold p50 {:.2} ms, p99 {:.2} ms; repeated p50 {:.2} ms, p99 {:.2} ms; scans p99 {:.2} ms",
            percentile(&l.cold_ms, 50.0),
            percentile(&l.cold_ms, 99.0),
            percentile(&l.samples_ms, 50.0),
            percentile(&l.samples_ms, 99.0),
            percentile(&l.scans_ms, 99.0)
        );
        out.push(l);
    }
    let index = IndexFigures { first_question_ms, bytes: node.engine().criteria_index_bytes() };
    eprintln!(
        "  criteria index: first question {:.0} ms (builds it), {:.1} MiB",
        index.first_question_ms,
        index.bytes as f64 / 1048576.0
    );
    Ok((out, index))
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Cold,
    Repeated,
    Scans,
}

/// The section's Markdown and JSON.
pub async fn section(data_dir: &Path, patients: usize, seed: u64, queries: usize) -> anyhow::Result<(String, Value)> {
    eprintln!("clinical: exporting at least {patients} patients as FHIR (gzip NDJSON)");
    let export = export(data_dir, patients, seed)?;
    let out = data_dir.join(format!("imported-{}-{seed}", export.patients));
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("clinical: importing {} resources in a process of its own", export.resources);
    let import = import_in_child(&export.dir, &out, verbund_fhir::ImportOptions::DEFAULT_MEMORY_MB)?;
    eprintln!("clinical: {:.0} resources/s, peak {:.0} MiB", import.per_second(), import.peak_rss_mb);
    let (latencies, index) = ccdl_latency(&out, 10, queries).await?;
    let mut md = String::from("## 7. Clinical data: FHIR import and CCDL feasibility queries\n\n");
    md.push_str(&format!(
        "{} patients, {} FHIR resources as gzip NDJSON ({:.1} MB). `verbund import` in a process of its own, \
         merge memory {} MiB:\n\n| resources/s | seconds | peak RSS (MiB) | issues |\n|---|---|---|---|\n| {:.0} | {:.1} | {:.0} | {} |\n\n",
        export.patients,
        export.resources,
        export.bytes as f64 / 1e6,
        verbund_fhir::ImportOptions::DEFAULT_MEMORY_MB,
        import.per_second(),
        import.seconds,
        import.peak_rss_mb,
        import.issues
    ));
    md.push_str(&format!(
        "CCDL feasibility latency through the coordinator (mutual TLS, one node serving all {} patients, \
         profile dp), {queries} queries each. Cold: the node's criterion cache emptied before each query, so every \
         criterion is computed (from the node's in-memory criteria index); repeated: the same question again, its \
         criteria from the cache; scans: cold with the index turned off, every criterion by DataFusion plans over \
         the Parquet files. The index is built by the first question on newly loaded data: {:.0} ms here; it then \
         holds {:.1} MiB.\n\n\
         | question | patients (noisy) | cold p50 ms | cold p99 ms | cold node p99 ms | repeated p50 ms | repeated p99 ms | repeated node p99 ms | scans p50 ms | scans p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        export.patients,
        index.first_question_ms,
        index.bytes as f64 / 1048576.0
    ));
    for l in &latencies {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            l.name,
            l.patients.map(|p| p.to_string()).unwrap_or_else(|| "withheld".into()),
            percentile(&l.cold_ms, 50.0),
            percentile(&l.cold_ms, 99.0),
            percentile(&l.cold_site_ms, 99.0),
            percentile(&l.samples_ms, 50.0),
            percentile(&l.samples_ms, 99.0),
            percentile(&l.site_ms, 99.0),
            percentile(&l.scans_ms, 50.0),
            percentile(&l.scans_ms, 99.0)
        ));
    }
    let json = json!({
        "patients": export.patients, "resources": export.resources, "export_bytes": export.bytes,
        "import": {"resources_per_second": round(import.per_second(), 0), "seconds": round(import.seconds, 2),
                   "peak_rss_mb": round(import.peak_rss_mb, 1), "issues": import.issues,
                   "memory_mb": verbund_fhir::ImportOptions::DEFAULT_MEMORY_MB},
        "ccdl": latencies.iter().map(Latency::to_json).collect::<Vec<_>>(),
        "criteria_index": {"first_question_ms": round(index.first_question_ms, 1), "mib": round(index.bytes as f64 / 1048576.0, 1)},
    });
    Ok((md, json))
}
