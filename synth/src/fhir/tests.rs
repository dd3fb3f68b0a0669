use super::*;
use crate::generate;
use arrow::array::AsArray;
use arrow::datatypes::{Date32Type, Float64Type};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

/// A file's or bundle's resources, each with its bundle fullUrl (None in NDJSON).
type Group = Vec<(Option<String>, Value)>;

fn read_text(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read output");
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("gunzip");
        text
    } else {
        String::from_utf8(bytes).expect("utf-8")
    }
}

fn read_groups(written: &WrittenFhir, layout: FhirLayout) -> Vec<Group> {
    written
        .files
        .iter()
        .map(|path| {
            let text = read_text(path);
            match layout {
                FhirLayout::Bundles => {
                    let bundle: Value = serde_json::from_str(&text).expect("bundle parses");
                    assert_eq!(bundle["resourceType"], "Bundle");
                    assert_eq!(bundle["type"], "transaction");
                    let entries = bundle["entry"].as_array().expect("entries");
                    assert!(!entries.is_empty() && entries.len() <= MAX_BUNDLE_ENTRIES);
                    entries
                        .iter()
                        .map(|e| {
                            let r = e["resource"].clone();
                            let (ty, id) = (r["resourceType"].as_str().expect("type"), r["id"].as_str().expect("id"));
                            assert_eq!(e["request"]["method"], "PUT");
                            assert_eq!(e["request"]["url"], format!("{ty}/{id}"));
                            let full_url = e["fullUrl"].as_str().expect("fullUrl").to_string();
                            assert_eq!(full_url, format!("urn:uuid:{}", resource_uuid(ty, id)));
                            (Some(full_url), r)
                        })
                        .collect()
                }
                _ => {
                    let ty = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('.').next()).expect("name");
                    text.lines()
                        .map(|line| {
                            let r: Value = serde_json::from_str(line).expect("line parses");
                            assert_eq!(r["resourceType"], ty, "{} holds only {ty}", path.display());
                            (None, r)
                        })
                        .collect()
                }
            }
        })
        .collect()
}

fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn strings<'a>(site: &'a SiteData, table: &str, col: &str) -> Vec<&'a str> {
    let batch = super::emit::table(site, table).expect("table");
    batch.column_by_name(col).expect("column").as_string::<i32>().iter().map(|v| v.expect("value")).collect()
}

fn dates(site: &SiteData, table: &str, col: &str) -> Vec<i32> {
    let batch = super::emit::table(site, table).expect("table");
    batch.column_by_name(col).expect("column").as_primitive::<Date32Type>().values().to_vec()
}

/// Checks one site's output against its tables, independently of the writer's logic.
fn check_site(site: &SiteData, written: &WrittenFhir, layout: FhirLayout) -> BTreeMap<String, usize> {
    let groups = read_groups(written, layout);
    let mut by_type: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut ids: HashSet<String> = HashSet::new();
    for (_, r) in groups.iter().flatten() {
        let ty = r["resourceType"].as_str().expect("resourceType").to_string();
        let id = r["id"].as_str().expect("id");
        assert!(valid_id(id), "invalid id {id}");
        assert!(ids.insert(format!("{ty}/{id}")), "duplicate {ty}/{id}");
        by_type.entry(ty).or_default().push(r);
    }
    let total: usize = by_type.values().map(Vec::len).sum();
    assert_eq!(total, written.resources);

    // Every reference resolves: within the bundle (urn:uuid) or within the site (Type/id).
    for group in &groups {
        let urls: HashMap<&str, &Value> = group.iter().filter_map(|(u, r)| u.as_deref().map(|u| (u, r))).collect();
        for (_, r) in group {
            let mut refs = Vec::new();
            references(r, &mut refs);
            assert!(!refs.is_empty() || r["resourceType"] == "Patient");
            for reference in refs {
                if reference.starts_with("urn:uuid:") {
                    assert_eq!(layout, FhirLayout::Bundles);
                    assert!(urls.contains_key(reference.as_str()), "{reference} not in its bundle");
                } else {
                    assert_ne!(layout, FhirLayout::Bundles, "a bundle references within itself");
                    assert!(ids.contains(&reference), "{reference} does not resolve");
                }
            }
        }
    }

    let count = |ty: &str| by_type.get(ty).map_or(0, Vec::len);
    let patients = strings(site, "patients", "patient_id");
    let cond_patients = strings(site, "conditions", "patient_id");
    let icd = strings(site, "conditions", "icd10");
    let obs_patients = strings(site, "observations", "patient_id");
    let obs_days = dates(site, "observations", "effective_date");
    assert_eq!(count("Patient"), patients.len());
    assert_eq!(count("Condition"), icd.len());
    assert_eq!(count("Observation"), obs_patients.len());
    let visits: HashSet<(&str, i32)> = obs_patients.iter().copied().zip(obs_days.iter().copied()).collect();
    let stays = icd.iter().filter(|c| **c == "I21.9" || **c == "S72.00").count();
    assert_eq!(count("Encounter"), visits.len() + stays);

    // Consents: ~90 % broad consent, a few objections, at most one of each per patient.
    let consents = by_type.get("Consent").cloned().unwrap_or_default();
    let broad: Vec<&&Value> = consents.iter().filter(|c| c["category"][0]["coding"][0]["code"] == "57016-8").collect();
    let objections = consents.len() - broad.len();
    let share = broad.len() as f64 / patients.len() as f64;
    assert!((0.8..=0.97).contains(&share), "broad consent share {share}");
    assert!(objections as f64 <= 0.08 * patients.len() as f64);
    let mut holders = HashSet::new();
    for c in &consents {
        assert_eq!(c["status"], "active");
        assert_eq!(c["scope"]["coding"][0]["code"], "research");
        let kind = c["category"][0]["coding"][0]["code"].as_str().expect("category").to_string();
        assert!(holders.insert((c["patient"]["reference"].to_string(), kind)), "two of a kind for one patient");
    }
    for c in &broad {
        assert_eq!(c["provision"]["type"], "deny");
        let nested = c["provision"]["provision"].as_array().expect("nested provisions");
        assert!(nested.iter().all(|p| p["type"] == "permit" && p["code"][0]["coding"][0]["system"] == CONSENT_POLICY));
        assert!(nested.iter().any(|p| p["code"][0]["coding"][0]["code"] == "2.16.840.1.113883.3.1937.777.24.5.3.8"));
        let (start, end) =
            (nested[0]["period"]["start"].as_str().expect("start"), nested[0]["period"]["end"].as_str().expect("end"));
        let years = |d: &str| d[..4].parse::<i32>().expect("year");
        assert_eq!(years(end) - years(start), 5);
        let same_day = if &start[4..] == "-02-29" { "-02-28" } else { &start[4..] };
        assert_eq!(&end[4..], same_day);
    }
    for c in consents.iter().filter(|c| c["category"][0]["coding"][0]["code"] != "57016-8") {
        let nested = &c["provision"]["provision"][0];
        assert_eq!(nested["type"], "deny");
        assert_eq!(nested["purpose"][0]["system"], RESEARCH_PURPOSE);
        assert_eq!(nested["purpose"][0]["code"], "commercial");
    }

    // Specimens point at one of the same patient's E11.9 diagnoses.
    let resolve = |reference: &str| -> Value {
        groups
            .iter()
            .flatten()
            .find(|(u, r)| {
                u.as_deref() == Some(reference)
                    || format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""))
                        == reference
            })
            .map(|(_, r)| r.clone())
            .expect("resolvable")
    };
    let diabetics: HashSet<&str> =
        cond_patients.iter().zip(&icd).filter(|(_, c)| **c == SPECIMEN_DIAGNOSIS).map(|(p, _)| *p).collect();
    assert!(count("Specimen") <= diabetics.len());
    for s in by_type.get("Specimen").into_iter().flatten() {
        assert_eq!(s["type"]["coding"][0]["code"], "119364003");
        assert_eq!(s["extension"][0]["url"], DIAGNOSE_EXTENSION);
        let condition = resolve(s["extension"][0]["valueReference"]["reference"].as_str().expect("diagnosis"));
        assert_eq!(condition["resourceType"], "Condition");
        assert_eq!(condition["code"]["coding"][0]["code"], SPECIMEN_DIAGNOSIS);
        assert_eq!(condition["subject"], s["subject"]);
    }

    // Contents equal the tables, row by row (NDJSON keeps table order).
    if layout != FhirLayout::Bundles {
        let batch = super::emit::table(site, "observations").expect("observations");
        let values = batch.column_by_name("value").expect("value").as_primitive::<Float64Type>().values().to_vec();
        let loinc = strings(site, "observations", "loinc");
        let units = strings(site, "observations", "unit");
        for (i, o) in by_type["Observation"].iter().enumerate() {
            assert_eq!(o["subject"]["reference"], format!("Patient/{}", obs_patients[i]));
            assert_eq!(o["code"]["coding"][0], serde_json::json!({"system": LOINC, "code": loinc[i]}));
            assert_eq!(o["valueQuantity"]["value"].as_f64(), Some(values[i]));
            assert_eq!(o["valueQuantity"]["code"], units[i]);
            assert_eq!(o["valueQuantity"]["system"], UCUM);
            assert_eq!(o["effectiveDateTime"], Day(obs_days[i]).to_string());
            assert_eq!(o["status"], "final");
        }
        let snomed = strings(site, "conditions", "snomed");
        let onset = dates(site, "conditions", "onset_date");
        for (i, c) in by_type["Condition"].iter().enumerate() {
            assert_eq!(c["subject"]["reference"], format!("Patient/{}", cond_patients[i]));
            assert_eq!(c["code"]["coding"][0]["system"], ICD10GM);
            assert_eq!(c["code"]["coding"][0]["code"], icd[i]);
            assert_eq!(c["code"]["coding"][1]["system"], SNOMED);
            assert_eq!(c["code"]["coding"][1]["code"], snomed[i]);
            assert_eq!(c["recordedDate"], Day(onset[i]).to_string());
            assert_eq!(c["onsetDateTime"], Day(onset[i]).to_string());
        }
        let sex = strings(site, "patients", "sex");
        let birth = dates(site, "patients", "birth_date");
        for (i, p) in by_type["Patient"].iter().enumerate() {
            assert_eq!(p["id"], patients[i]);
            let gender = if sex[i] == "diverse" { "other" } else { sex[i] };
            assert_eq!(p["gender"], gender);
            assert_eq!(p["birthDate"], Day(birth[i]).to_string());
            let postal = p["address"][0]["postalCode"].as_str().expect("postal code");
            assert!(postal.len() == 5 && postal.bytes().all(|b| b.is_ascii_digit()));
        }
    }
    by_type.into_iter().map(|(k, v)| (k, v.len())).collect()
}

#[test]
fn every_layout_parses_back_complete_and_resolvable() {
    let sites = generate(3, 0.05).expect("generate");
    let mut counts = Vec::new();
    for layout in [FhirLayout::Ndjson, FhirLayout::NdjsonGzip, FhirLayout::Bundles] {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_fhir(dir.path(), &sites, layout).expect("write");
        assert_eq!(written.len(), sites.len());
        let per_layout: Vec<_> = sites.iter().zip(&written).map(|(s, w)| check_site(s, w, layout)).collect();
        for (s, w) in sites.iter().zip(&written) {
            assert_eq!(w.site, s.site);
            assert!(w.files.iter().all(|f| f.starts_with(dir.path().join(&s.site))));
        }
        counts.push(per_layout);
    }
    assert!(counts.iter().all(|c| *c == counts[0]), "layouts hold the same resources");
    let all = &counts[0];
    for ty in RESOURCE_TYPES {
        assert!(all.iter().map(|c| c.get(ty).copied().unwrap_or(0)).sum::<usize>() > 0, "no {ty} at all");
    }
}

#[test]
fn bundles_split_and_keep_patients_together() {
    let sites = generate(5, 0.1).expect("generate");
    let dir = tempfile::tempdir().expect("tempdir");
    let written = write_fhir(dir.path(), &sites[..1], FhirLayout::Bundles).expect("write");
    assert!(written[0].files.len() > 1, "600 patients need several bundles");
    let names: Vec<String> =
        written[0].files.iter().map(|f| f.file_name().expect("name").to_string_lossy().into_owned()).collect();
    assert_eq!(names[0], "bundle-0001.json");
    assert_eq!(names[1], "bundle-0002.json");
    // urn:uuid references resolve within their own bundle (checked in check_site).
    check_site(&sites[0], &written[0], FhirLayout::Bundles);
}

#[test]
fn gzip_equals_plain_and_same_seed_same_bytes() {
    let read_all = |dir: &Path, written: &[WrittenFhir]| -> Vec<(PathBuf, Vec<u8>)> {
        written
            .iter()
            .flat_map(|w| w.files.iter())
            .map(|f| (f.strip_prefix(dir).expect("under dir").to_path_buf(), std::fs::read(f).expect("read")))
            .collect()
    };
    for layout in [FhirLayout::Ndjson, FhirLayout::NdjsonGzip, FhirLayout::Bundles] {
        let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let wa = write_fhir(a.path(), &generate(11, 0.03).expect("generate"), layout).expect("write");
        let wb = write_fhir(b.path(), &generate(11, 0.03).expect("generate"), layout).expect("write");
        assert_eq!(read_all(a.path(), &wa), read_all(b.path(), &wb), "{layout:?} is deterministic");
        let c = tempfile::tempdir().expect("tempdir");
        let wc = write_fhir(c.path(), &generate(12, 0.03).expect("generate"), layout).expect("write");
        assert_ne!(read_all(a.path(), &wa), read_all(c.path(), &wc), "another seed, other data");
    }
    let sites = generate(11, 0.03).expect("generate");
    let (plain, gz) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let wp = write_fhir(plain.path(), &sites, FhirLayout::Ndjson).expect("write");
    let wg = write_fhir(gz.path(), &sites, FhirLayout::NdjsonGzip).expect("write");
    for (p, g) in wp.iter().zip(&wg) {
        assert_eq!(p.files.len(), g.files.len());
        assert_eq!(p.resources, g.resources);
        for (fp, fg) in p.files.iter().zip(&g.files) {
            assert!(fg.to_string_lossy().ends_with(".ndjson.gz"));
            assert_eq!(read_text(fp), read_text(fg));
        }
    }
}

#[test]
fn days_format_as_calendar_dates() {
    assert_eq!(Day(0).to_string(), "1970-01-01");
    assert_eq!(Day(REFERENCE_DAY).to_string(), "2026-01-01");
    assert_eq!(Day(11_016).to_string(), "2000-02-29");
    assert_eq!(Day(-1).to_string(), "1969-12-31");
    for d in -40_000..40_000 {
        let (y, m, dd) = Day(d).civil();
        assert_eq!(Day::from_civil(y, m, dd), Day(d));
    }
    assert_eq!(Day(11_016).plus_years(5).to_string(), "2005-02-28");
    assert_eq!(Day(REFERENCE_DAY).plus_years(5).to_string(), "2031-01-01");
}

#[test]
fn uuids_are_deterministic_v4_shaped_and_distinct() {
    let u = resource_uuid("Patient", "UKN-000001");
    assert_eq!(u, resource_uuid("Patient", "UKN-000001"));
    assert_ne!(u, resource_uuid("Condition", "UKN-000001"));
    assert_ne!(u, resource_uuid("Patient", "UKN-000002"));
    let parts: Vec<&str> = u.split('-').collect();
    assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
    assert!(parts[2].starts_with('4'));
    assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    let many: HashSet<String> =
        (0..50_000).map(|i| resource_uuid("Observation", &format!("UKN-{i:06}-obs-1"))).collect();
    assert_eq!(many.len(), 50_000);
}
