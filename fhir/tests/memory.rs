//! Bounded memory: an NDJSON export far larger than the memory limit is imported in a child
//! process (this test binary again, with an environment variable), whose peak RSS (VmHWM)
//! must stay far below the file's size.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use verbund_fhir::{ImportOptions, import, peak_rss_kb};

const CHILD_INPUT: &str = "VERBUND_FHIR_MEMORY_CHILD_INPUT";
const CHILD_OUT: &str = "VERBUND_FHIR_MEMORY_CHILD_OUT";

/// Writes `patients` Patients, each with `per_patient` Observations padded with narrative
/// text the importer ignores (so the file is large while the rows stay many and small).
fn generate(path: &Path, patients: usize, per_patient: usize) -> anyhow::Result<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let padding = "x".repeat(700);
    let mut resources = 0u64;
    for p in 0..patients {
        writeln!(
            w,
            r#"{{"resourceType":"Patient","id":"p{p}","gender":"{}","birthDate":"19{:02}-0{}-1{}","address":[{{"postalCode":"{:05}"}}]}}"#,
            if p % 2 == 0 { "female" } else { "male" },
            p % 100,
            1 + p % 9,
            p % 10,
            p % 100_000
        )?;
        resources += 1;
        for o in 0..per_patient {
            writeln!(
                w,
                r#"{{"resourceType":"Observation","id":"o{p}-{o}","status":"final","text":{{"status":"generated","div":"<div>{padding}</div>"}},"code":{{"coding":[{{"system":"http://loinc.org","code":"{}-{}"}}]}},"subject":{{"reference":"Patient/p{p}"}},"effectiveDateTime":"2020-0{}-1{}T08:00:00+01:00","valueQuantity":{{"value":{}.5,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}}}"#,
                1000 + o % 50,
                o % 10,
                1 + o % 9,
                o % 10,
                o % 300
            )?;
            resources += 1;
        }
    }
    w.flush()?;
    Ok((std::fs::metadata(path)?.len(), resources))
}

/// In the child: import and print the figures on stdout.
fn child(input: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = rt.block_on(import(&ImportOptions { inputs: vec![input], out, memory_mb: 64, progress: false }))?;
    eprintln!("{summary}");
    println!("CHILD_VMHWM_KB={}", peak_rss_kb().unwrap_or(0));
    println!("CHILD_ELAPSED_MS={}", summary.elapsed.as_millis());
    println!("CHILD_OBSERVATIONS={}", summary.rows.get("observations").copied().unwrap_or(0));
    println!("CHILD_ISSUES={}", summary.issues);
    Ok(())
}

fn figure(stdout: &str, key: &str) -> anyhow::Result<u64> {
    stdout
        .lines()
        .find_map(|l| l.find(key).map(|i| &l[i + key.len()..]))
        .ok_or_else(|| anyhow::anyhow!("{key} missing in child output: {stdout}"))?
        .trim()
        .parse()
        .map_err(Into::into)
}

fn run_child(test: &str, input: &Path, out: &Path) -> anyhow::Result<String> {
    let output = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env(CHILD_INPUT, input)
        .env(CHILD_OUT, out)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    anyhow::ensure!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    eprintln!("{stderr}");
    Ok(stdout)
}

fn measure(test: &str, patients: usize, per_patient: usize) -> anyhow::Result<Option<(u64, u64, u64, u64)>> {
    if let (Some(input), Some(out)) = (std::env::var_os(CHILD_INPUT), std::env::var_os(CHILD_OUT)) {
        child(input.into(), out.into())?;
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("export.ndjson");
    let (bytes, resources) = generate(&input, patients, per_patient)?;
    let stdout = run_child(test, &input, &dir.path().join("out"))?;
    let hwm = figure(&stdout, "CHILD_VMHWM_KB=")?;
    let ms = figure(&stdout, "CHILD_ELAPSED_MS=")?;
    assert_eq!(figure(&stdout, "CHILD_ISSUES=")?, 0);
    assert_eq!(figure(&stdout, "CHILD_OBSERVATIONS=")?, (patients * per_patient) as u64);
    Ok(Some((bytes, resources, hwm, ms)))
}

#[test]
fn import_memory_stays_bounded() -> anyhow::Result<()> {
    // ~440 MB, 495 000 resources.
    let Some((bytes, resources, hwm_kb, ms)) = measure("import_memory_stays_bounded", 45_000, 10)? else {
        return Ok(());
    };
    let rate = resources as f64 / (ms as f64 / 1000.0);
    println!(
        "input {} MiB, {resources} resources, child VmHWM {} MiB, {:.1} s, {rate:.0} resources/s",
        bytes >> 20,
        hwm_kb >> 10,
        ms as f64 / 1000.0
    );
    assert!(bytes > 400 << 20, "the export must be far larger than the memory limit");
    assert!(hwm_kb < 200 << 10, "peak RSS {} MiB for a {} MiB input", hwm_kb >> 10, bytes >> 20);
    Ok(())
}

/// Throughput in a release build: `cargo test --release -p verbund-fhir --test memory -- --ignored`.
#[test]
#[ignore = "a measurement, run in release"]
fn import_throughput_release() -> anyhow::Result<()> {
    let Some((bytes, resources, hwm_kb, ms)) = measure("import_throughput_release", 100_000, 10)? else {
        return Ok(());
    };
    println!(
        "THROUGHPUT input {} MiB, {resources} resources, VmHWM {} MiB, {:.1} s, {:.0} resources/s",
        bytes >> 20,
        hwm_kb >> 10,
        ms as f64 / 1000.0,
        resources as f64 / (ms as f64 / 1000.0)
    );
    Ok(())
}
