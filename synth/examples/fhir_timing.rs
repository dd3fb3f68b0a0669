//! Times generation and FHIR writing: `cargo run --release -p verbund-synth --example
//! fhir_timing -- DIR [PATIENTS] [ndjson|gzip|bundles]...` (default 100000 patients, all layouts).

use std::time::Instant;
use verbund_synth::fhir::{FhirLayout, write_fhir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().ok_or("usage: fhir_timing DIR [PATIENTS] [LAYOUT...]")?);
    let patients: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000.0);
    let mut layouts: Vec<FhirLayout> = args
        .iter()
        .skip(2)
        .map(|s| match s.as_str() {
            "ndjson" => Ok(FhirLayout::Ndjson),
            "gzip" => Ok(FhirLayout::NdjsonGzip),
            "bundles" => Ok(FhirLayout::Bundles),
            other => Err(format!("unknown layout {other}")),
        })
        .collect::<Result<_, _>>()?;
    if layouts.is_empty() {
        layouts = vec![FhirLayout::Ndjson, FhirLayout::NdjsonGzip, FhirLayout::Bundles];
    }
    let start = Instant::now();
    let sites = verbund_synth::generate(42, patients / 10_500.0)?;
    let rows: usize = sites.iter().flat_map(|s| s.tables.iter()).map(|(_, b)| b.num_rows()).sum();
    println!("generate: {rows} rows in {:.2?}", start.elapsed());
    for layout in layouts {
        let out = dir.join(format!("{layout:?}").to_lowercase());
        let start = Instant::now();
        let written = write_fhir(&out, &sites, layout)?;
        let elapsed = start.elapsed();
        let resources: usize = written.iter().map(|w| w.resources).sum();
        let files: Vec<_> = written.iter().flat_map(|w| w.files.iter()).collect();
        let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
        println!(
            "{layout:?}: {resources} resources, {} files, {:.1} MB in {elapsed:.2?} ({:.0} resources/s)",
            files.len(),
            bytes as f64 / 1e6,
            resources as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(())
}
