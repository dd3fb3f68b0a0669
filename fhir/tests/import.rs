//! The importer against the MII test material and hand-made fixtures.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use common::{records, rows, run, s, shared};
use serde_json::Value;
use verbund_fhir::{DATASETS, Location, dataset_config};

fn codings_of(v: &Value) -> usize {
    v.get("coding").and_then(Value::as_array).map_or(0, Vec::len)
}

fn list<'a>(r: &'a Value, key: &str) -> Vec<&'a Value> {
    match r.get(key) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    }
}

/// Counts of consent_provisions rows and provision.code codings in nested provisions.
fn nested(p: &Value, rows: &mut usize, codings: &mut usize) {
    for child in list(p, "provision") {
        let n: usize = list(child, "code").iter().map(|c| codings_of(c)).sum();
        *rows += n.max(1);
        *codings += n;
        nested(child, rows, codings);
    }
}

/// An independent scan of testData.json: resources per type and the rows each dataset should have.
/// Resources per type, rows per dataset, patients per gender.
type Scan = (BTreeMap<String, u64>, BTreeMap<&'static str, u64>, BTreeMap<String, u64>);

fn scan(path: &Path) -> anyhow::Result<Scan> {
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let mut types = BTreeMap::new();
    let mut expected: BTreeMap<&'static str, u64> = DATASETS.iter().map(|d| (*d, 0)).collect();
    let mut genders = BTreeMap::new();
    let mut medications: BTreeMap<String, usize> = BTreeMap::new();
    for e in &entries {
        let r = &e["resource"];
        if r["resourceType"] == "Medication" {
            medications.insert(format!("Medication/{}", r["id"].as_str().unwrap_or_default()), codings_of(&r["code"]));
        }
    }
    for e in &entries {
        let r = &e["resource"];
        let t = r["resourceType"].as_str().unwrap_or_default().to_string();
        *types.entry(t.clone()).or_default() += 1;
        let mut add = |d: &'static str, n: usize| *expected.entry(d).or_default() += n as u64;
        let sum = |key: &str| list(r, key).iter().map(|c| codings_of(c)).sum::<usize>();
        match t.as_str() {
            "Patient" => {
                add("patients", 1);
                if let Some(g) = r["gender"].as_str() {
                    *genders.entry(g.to_string()).or_default() += 1;
                    add("codings", 1);
                }
            }
            "Condition" => {
                add("conditions", 1);
                add("codings", sum("code") + sum("category") + sum("bodySite"));
            }
            "Observation" => {
                let comps = list(r, "component");
                add("observations", 1 + comps.len());
                add("codings", sum("code") + sum("category") + sum("valueCodeableConcept") + sum("interpretation"));
                for c in comps {
                    let csum = |key: &str| list(c, key).iter().map(|c| codings_of(c)).sum::<usize>();
                    add("codings", csum("code") + csum("valueCodeableConcept") + csum("interpretation"));
                }
            }
            "Encounter" => {
                add("encounters", 1);
                add("codings", usize::from(r.get("class").is_some()) + sum("type") + sum("serviceType"));
            }
            "Procedure" => {
                add("procedures", 1);
                add("codings", sum("code") + sum("category"));
            }
            "MedicationAdministration" | "MedicationRequest" | "MedicationStatement" => {
                add("medication_uses", 1);
                let reference = r["medicationReference"]["reference"].as_str().unwrap_or_default();
                add("codings", medications.get(reference).copied().unwrap_or(0) + sum("medicationCodeableConcept"));
            }
            "Specimen" => {
                add("specimens", 1);
                let site = r["collection"]["bodySite"].clone();
                add("codings", sum("type") + codings_of(&site));
            }
            "Consent" => {
                add("consents", 1);
                let (mut prov_rows, mut prov_codes) = (0, 0);
                nested(&r["provision"], &mut prov_rows, &mut prov_codes);
                add("consent_provisions", prov_rows);
                add("codings", sum("category") + sum("scope") + prov_codes + list(r, "policy").len());
            }
            _ => {}
        }
    }
    Ok((types, expected, genders))
}

#[tokio::test]
async fn test_data_counts_match_an_independent_scan() -> anyhow::Result<()> {
    let input = shared("testData.json");
    let (types, expected, genders) = scan(&input)?;
    assert_eq!(types.get("Patient"), Some(&835));
    assert_eq!(types.get("Observation"), Some(&830));
    assert_eq!(types.get("Organization"), Some(&1664));
    let dir = tempfile::tempdir()?;
    let summary = run(&[&input], dir.path()).await?;
    println!("{summary}");
    assert_eq!(summary.issues, 0, "{:?}", summary.first_issues);
    for (t, n) in &types {
        let c = summary.resources.get(t).copied().unwrap_or_default();
        assert_eq!(c.read, *n, "{t} read");
        if matches!(t.as_str(), "Organization" | "DiagnosticReport") {
            assert_eq!((c.imported, c.not_imported), (0, *n), "{t} is not imported");
        } else {
            assert_eq!((c.imported, c.skipped), (*n, 0), "{t} imported");
        }
    }
    for d in DATASETS {
        assert_eq!(summary.rows.get(*d).copied(), expected.get(d).copied(), "rows of {d} (summary)");
        assert_eq!(rows(dir.path(), d)?.len() as u64, expected[d], "rows of {d} (files)");
    }
    let mut got = BTreeMap::new();
    for p in records(dir.path(), "patients")? {
        if let Some(g) = p["gender"].clone() {
            *got.entry(g).or_insert(0u64) += 1;
        }
    }
    assert_eq!(got, genders);
    assert_eq!(got.get("female"), Some(&159));
    // Every observation row belongs to a patient; components name their parent.
    let obs = records(dir.path(), "observations")?;
    assert!(obs.iter().all(|o| o["patient_id"].is_some() && o["effective_start"].is_some()));
    let comps = obs.iter().filter(|o| o["parent"].is_some()).count();
    assert!(comps > 0 && comps as u64 == expected["observations"] - 830);
    // The Medication's ATC code reaches all three uses.
    let uses = records(dir.path(), "medication_uses")?;
    assert_eq!(uses.len(), 3);
    assert!(uses.iter().all(|u| u["med_code"] == s("P01CA")), "{uses:?}");
    // The dataset config lists every dataset and parses as TOML.
    let config: toml::Table = toml::from_str(&dataset_config(dir.path()))?;
    let blocks = config["dataset"].as_array().map(Vec::len);
    assert_eq!(blocks, Some(DATASETS.len()));
    Ok(())
}

#[tokio::test]
async fn kds_bundle_dates_deceased_encounters_specimens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let summary = run(&[&shared("Bundle-mii-exa-test-data-bundle.json")], dir.path()).await?;
    println!("{summary}");
    // The only skipped resources are the pathology findings without a subject.
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(shared("Bundle-mii-exa-test-data-bundle.json"))?)?;
    let imported = [
        "Patient",
        "Condition",
        "Observation",
        "Encounter",
        "Procedure",
        "MedicationAdministration",
        "MedicationRequest",
        "MedicationStatement",
        "Specimen",
        "Consent",
    ];
    let without_subject = bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| {
                    let r = &e["resource"];
                    imported[1..].contains(&r["resourceType"].as_str().unwrap_or_default())
                        && r.get("subject").is_none()
                        && r.get("patient").is_none()
                })
                .count()
        })
        .unwrap_or(0);
    assert!(without_subject > 0);
    assert_eq!(summary.issues, without_subject as u64, "{:#?}", summary.first_issues);
    assert!(summary.first_issues.iter().all(|i| i.reason.contains("no patient reference")));
    assert_eq!(summary.resources["MedicationStatement"].imported, 6);
    let patients = records(dir.path(), "patients")?;
    let by_id = |id: &str| patients.iter().find(|p| p["patient_id"] == s(id)).cloned();
    let p4 = by_id("mii-exa-test-data-patient-4").ok_or_else(|| anyhow::anyhow!("patient 4"))?;
    assert_eq!((p4["birth_date"].clone(), p4["birth_date_end"].clone()), (s("1962-01-01"), s("1962-12-31")));
    assert_eq!(p4["postal_region"], s("10"));
    let p1 = by_id("mii-exa-test-data-patient-1").ok_or_else(|| anyhow::anyhow!("patient 1"))?;
    assert_eq!((p1["deceased"].clone(), p1["deceased_date"].clone()), (s("true"), s("2024-02-22")));
    assert_eq!(p1["birth_date"], p1["birth_date_end"]);
    assert_eq!(p1["postal_region"], s("13"), "two digits only, never the full code");
    let p2 = by_id("mii-exa-test-data-patient-2").ok_or_else(|| anyhow::anyhow!("patient 2"))?;
    assert_eq!((p2["deceased"].clone(), p2["deceased_date"].clone()), (s("true"), None));
    let p3 = by_id("mii-exa-test-data-patient-3").ok_or_else(|| anyhow::anyhow!("patient 3"))?;
    assert_eq!(p3["deceased"], s("false"));

    let encounters = records(dir.path(), "encounters")?;
    assert_eq!(encounters.len(), 3);
    assert!(encounters.iter().all(|e| e["class_code"] == s("IMP")));
    let e2 = encounters
        .iter()
        .find(|e| e["resource"] == s("Encounter/mii-exa-test-data-patient-1-encounter-2"))
        .ok_or_else(|| anyhow::anyhow!("encounter 2"))?;
    assert_eq!(e2["part_of"], s("Encounter/mii-exa-test-data-patient-1-encounter-1"));
    assert_eq!((e2["period_start"].clone(), e2["period_end"].clone()), (s("2024-02-20"), s("2024-02-20")));
    let codings = records(dir.path(), "codings")?;
    for e in &encounters {
        let elements: std::collections::BTreeSet<_> =
            codings.iter().filter(|c| c["resource"] == e["resource"]).filter_map(|c| c["element"].clone()).collect();
        for want in ["class", "type", "serviceType"] {
            assert!(elements.contains(want), "{:?} lacks {want}: {elements:?}", e["resource"]);
        }
    }
    assert!(codings.iter().any(|c| c["element"] == s("serviceType")
        && c["system"] == s("http://fhir.de/CodeSystem/dkgev/Fachabteilungsschluessel")
        && c["code"] == s("0100")));

    let specimens = records(dir.path(), "specimens")?;
    assert_eq!(specimens.len(), 7);
    let sp1 = specimens
        .iter()
        .find(|x| x["resource"] == s("Specimen/mii-exa-test-data-patient-1-specimen-1"))
        .ok_or_else(|| anyhow::anyhow!("specimen 1"))?;
    assert_eq!(sp1["diagnosis"], s("Condition/mii-exa-test-data-patient-1-diagnose-1"));
    assert_eq!(sp1["body_site_code"], s("789218009"));
    assert_eq!(sp1["collected_start"], s("2024-02-15"));
    let sp2 = specimens
        .iter()
        .find(|x| x["resource"] == s("Specimen/mii-exa-test-data-patient-1-specimen-2"))
        .ok_or_else(|| anyhow::anyhow!("specimen 2"))?;
    assert_eq!(sp2["diagnosis"], None);
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    Ok(())
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1980-05"}"#;

#[tokio::test]
async fn bad_resources_are_reported_and_skipped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("nested"))?;
    let ndjson = input.join("mixed.ndjson");
    write(
        &ndjson,
        &[
            PATIENT,
            r#"{"resourceType":"Observation","id":"o1", "subject": {"#,
            r#"{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p1"},"valueQuantity":{"value":"high"}}"#,
            r#"{"resourceType":"Observation","id":"o3","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]}}"#,
            "",
            r#"{"resourceType":"Observation","id":"o4","subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-02-30"}"#,
            r#"{"resourceType":"Observation","id":"o5","subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-02-03","valueQuantity":{"value":7.5,"unit":"mg"}}"#,
            r#"{"resourceType":"Organization","id":"org"}"#,
        ]
        .join("\r\n"),
    )?;
    let bundle = input.join("nested").join("b.json");
    write(
        &bundle,
        r#"{"resourceType":"Bundle","type":"collection","entry":[
            {"fullUrl":"http://x/Condition/c1","resource":{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},"recordedDate":"2021"}},
            {"fullUrl":"http://x/Condition/c2","resource":{"resourceType":"Condition","id":"c2","code":{"coding":[{"code":"X"}]}}},
            {"fullUrl":"http://x/Condition/c3","resource":{"resourceType":"Condition","id":"c3","subject":{"reference":"Patient/p1"},"code":"not a concept"}}
        ]}"#,
    )?;
    write(&input.join("ignored.txt"), "not read")?;
    let summary = run(&[&input], &dir.path().join("out")).await?;
    println!("{summary}");
    let out = dir.path().join("out");
    assert_eq!(summary.files_read, 2);
    let issues = &summary.first_issues;
    assert_eq!(summary.issues, 6, "{issues:#?}");
    let at = |loc: Location| issues.iter().find(|i| i.location == loc).cloned();
    let line2 = at(Location::Line(2)).ok_or_else(|| anyhow::anyhow!("line 2"))?;
    assert_eq!(line2.file, ndjson);
    assert!(line2.reason.contains("invalid JSON"), "{}", line2.reason);
    let line3 = at(Location::Line(3)).ok_or_else(|| anyhow::anyhow!("line 3"))?;
    assert!(line3.reason.contains("invalid type"), "{}", line3.reason);
    assert_eq!((line3.resource_type.as_deref(), line3.id.as_deref()), (Some("Observation"), Some("o2")));
    let line4 = at(Location::Line(4)).ok_or_else(|| anyhow::anyhow!("line 4"))?;
    assert!(line4.reason.contains("no patient reference"), "{}", line4.reason);
    let line6 = at(Location::Line(6)).ok_or_else(|| anyhow::anyhow!("line 6"))?;
    assert!(line6.reason.contains("invalid date"), "{}", line6.reason);
    let entry1 = at(Location::Entry { index: 1, full_url: Some("http://x/Condition/c2".into()) })
        .ok_or_else(|| anyhow::anyhow!("entry 1"))?;
    assert_eq!(entry1.file, bundle);
    assert!(entry1.reason.contains("no patient reference"));
    let entry2 = at(Location::Entry { index: 2, full_url: Some("http://x/Condition/c3".into()) })
        .ok_or_else(|| anyhow::anyhow!("entry 2"))?;
    assert!(entry2.reason.contains("invalid type"), "{}", entry2.reason);
    // The issues file holds them all, one JSON object a line.
    let file = summary.issues_file.clone().ok_or_else(|| anyhow::anyhow!("issues file"))?;
    assert_eq!(std::fs::read_to_string(file)?.lines().count(), 6);
    // The rest is imported.
    assert_eq!(rows(&out, "patients")?.len(), 1);
    let obs = records(&out, "observations")?;
    assert_eq!(obs.len(), 1);
    assert_eq!((obs[0]["value"].clone(), obs[0]["value_unit"].clone()), (s("7.5"), s("mg")));
    let conditions = records(&out, "conditions")?;
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["recorded_date"], s("2021-01-01"));
    let obs_counts = summary.resources["Observation"];
    assert_eq!((obs_counts.read, obs_counts.imported, obs_counts.skipped), (4, 1, 3));
    assert_eq!(summary.resources["Organization"].not_imported, 1);
    Ok(())
}

fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(to)?, flate2::Compression::fast());
    enc.write_all(&std::fs::read(from)?)?;
    enc.finish()?;
    Ok(())
}

async fn all_rows(out: &Path) -> anyhow::Result<Vec<common::Rows>> {
    DATASETS.iter().map(|d| rows(out, d)).collect()
}

#[tokio::test]
async fn gzip_equals_plain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plain_json = shared("Bundle-mii-exa-test-data-bundle.json");
    let plain_nd = dir.path().join("small.ndjson");
    write(
        &plain_nd,
        &format!(
            "{PATIENT}\r\n{}\r\n",
            r#"{"resourceType":"Observation","id":"o5","subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-02-03","valueQuantity":{"value":7.5,"unit":"mg"}}"#
        ),
    )?;
    // No `.gz` suffix on one of them: detected by the magic bytes.
    let gz_json = dir.path().join("bundle.json");
    let gz_nd = dir.path().join("small.ndjson.gz");
    gzip(&plain_json, &gz_json)?;
    gzip(&plain_nd, &gz_nd)?;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let sa = run(&[&plain_json, &plain_nd], &a).await?;
    let sb = run(&[&gz_json, &gz_nd], &b).await?;
    assert_eq!(sa.resources, sb.resources);
    assert_eq!(sa.issues, sb.issues);
    assert_eq!(all_rows(&a).await?, all_rows(&b).await?);
    assert_eq!(rows(&b, "patients")?.len(), 5);
    Ok(())
}

#[tokio::test]
async fn urn_uuid_references_resolve_like_type_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Forward references: the Observation comes before the Patient and Encounter it names.
    let urn = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"fullUrl":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000003","resource":{"resourceType":"Observation","id":"o1",
        "subject":{"reference":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000001"},
        "encounter":{"reference":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000002"},
        "code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"effectiveDateTime":"2022-03-04",
        "valueQuantity":{"value":6.1,"code":"%"}},"request":{"method":"POST","url":"Observation"}},
      {"fullUrl":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000004","resource":{"resourceType":"MedicationStatement","id":"ms1",
        "subject":{"reference":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000001"},
        "medicationReference":{"reference":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000005"},"effectivePeriod":{"start":"2022-01"}}},
      {"fullUrl":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000001","resource":{"resourceType":"Patient","id":"p1","gender":"male"}},
      {"fullUrl":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000002","resource":{"resourceType":"Encounter","id":"e1",
        "subject":{"reference":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000001"},"class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},
        "period":{"start":"2022-03-04"}}},
      {"fullUrl":"urn:uuid:0b0c2b7e-0001-4000-8000-000000000005","resource":{"resourceType":"Medication","id":"m1",
        "code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/atc","code":"A10BA02"}]}}}
    ]}"#;
    let plain = urn
        .replace("urn:uuid:0b0c2b7e-0001-4000-8000-000000000001\"}", "Patient/p1\"}")
        .replace("urn:uuid:0b0c2b7e-0001-4000-8000-000000000002\"}", "https://fhir.example.org/fhir/Encounter/e1\"}")
        .replace("urn:uuid:0b0c2b7e-0001-4000-8000-000000000005\"}", "Medication/m1/_history/3\"}");
    assert!(!plain.contains("\"reference\":\"urn:"));
    let (a_in, b_in) = (dir.path().join("urn.json"), dir.path().join("plain.json"));
    write(&a_in, urn)?;
    write(&b_in, &plain)?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let sa = run(&[&a_in], &a).await?;
    run(&[&b_in], &b).await?;
    assert_eq!(sa.issues, 0, "{:?}", sa.first_issues);
    assert_eq!(all_rows(&a).await?, all_rows(&b).await?);
    let obs = records(&a, "observations")?;
    assert_eq!((obs[0]["patient_id"].clone(), obs[0]["encounter"].clone()), (s("p1"), s("Encounter/e1")));
    let uses = records(&a, "medication_uses")?;
    assert_eq!((uses[0]["medication"].clone(), uses[0]["med_code"].clone()), (s("Medication/m1"), s("A10BA02")));
    assert_eq!((uses[0]["time_start"].clone(), uses[0]["time_end"].clone()), (s("2022-01-01"), None));
    // An unresolvable urn is an issue.
    let broken = dir.path().join("broken.json");
    let broken_text = urn.replace("000000000002\"},", "000000000099\"},");
    assert_ne!(broken_text, urn);
    write(&broken, &broken_text)?;
    let sc = run(&[&broken], &dir.path().join("c")).await?;
    assert_eq!(sc.issues, 1);
    assert!(sc.first_issues[0].reason.contains("unresolvable"), "{:?}", sc.first_issues);
    Ok(())
}

#[tokio::test]
async fn reimport_is_idempotent_and_deltas_merge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let kds = shared("Bundle-mii-exa-test-data-bundle.json");
    let first = run(&[&kds], &out).await?;
    let before = all_rows(&out).await?;
    let second = run(&[&kds], &out).await?;
    assert_eq!(all_rows(&out).await?, before, "the same input twice changes nothing");
    assert_eq!(first.rows, second.rows);
    assert_eq!(second.generation, first.generation + 1);
    // Previous generation kept, older ones removed, current is a symlink to the newest.
    let third = run(&[&kds], &out).await?;
    let gens: Vec<String> = std::fs::read_dir(out.join("patients"))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(gens.len(), 2, "{gens:?}");
    assert_eq!(
        std::fs::read_link(out.join("patients").join("current"))?,
        Path::new(&format!("gen-{}", third.generation))
    );
    assert!(!out.join(".staging").exists());

    // A delta: one changed Patient, one deleted Observation (with components and codings).
    let obs_before = records(&out, "observations")?;
    let victim = "Observation/mii-exa-test-data-patient-1-muv-arterieller-blutdruck";
    let has_components = obs_before.iter().any(|o| o["parent"] == s(victim));
    assert!(has_components, "the deleted Observation has components");
    let victim = victim.to_string();
    let delta = dir.path().join("delta.json");
    write(
        &delta,
        &format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[
              {{"resource":{{"resourceType":"Patient","id":"mii-exa-test-data-patient-3","gender":"unknown","birthDate":"1968-09"}},
                "request":{{"method":"PUT","url":"Patient/mii-exa-test-data-patient-3"}}}},
              {{"request":{{"method":"DELETE","url":"{victim}"}}}}
            ]}}"#
        ),
    )?;
    let s4 = run(&[&delta], &out).await?;
    println!("{s4}");
    let patients = records(&out, "patients")?;
    assert_eq!(patients.len(), 4);
    let p3: Vec<_> = patients.iter().filter(|p| p["patient_id"] == s("mii-exa-test-data-patient-3")).collect();
    assert_eq!(p3.len(), 1);
    assert_eq!((p3[0]["gender"].clone(), p3[0]["birth_date_end"].clone()), (s("unknown"), s("1968-09-30")));
    let obs_after = records(&out, "observations")?;
    assert!(
        obs_after
            .iter()
            .all(|o| o["resource"].as_deref() != Some(victim.as_str())
                && o["parent"].as_deref() != Some(victim.as_str()))
    );
    let removed = obs_before.len() - obs_after.len();
    assert!(removed >= 1);
    let codings = records(&out, "codings")?;
    assert!(
        !codings.iter().any(|c| c["resource"].as_deref().is_some_and(|r| r.split('#').next() == Some(victim.as_str())))
    );
    let gender_codes: Vec<_> =
        codings.iter().filter(|c| c["resource"] == s("Patient/mii-exa-test-data-patient-3")).collect();
    assert_eq!(gender_codes.len(), 1);
    assert_eq!(gender_codes[0]["code"], s("unknown"));
    // One row per resource in every dataset with unique resources.
    for d in [
        "patients",
        "conditions",
        "observations",
        "encounters",
        "procedures",
        "medication_uses",
        "specimens",
        "consents",
    ] {
        let r = records(&out, d)?;
        let unique: std::collections::BTreeSet<_> = r.iter().map(|x| x["resource"].clone()).collect();
        assert_eq!(unique.len(), r.len(), "{d}");
    }
    Ok(())
}

#[tokio::test]
async fn medication_arriving_later_fills_earlier_uses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let run1 = dir.path().join("run1.ndjson");
    write(
        &run1,
        &[
            PATIENT,
            r#"{"resourceType":"MedicationAdministration","id":"ma1","status":"completed","subject":{"reference":"Patient/p1"},"medicationReference":{"reference":"Medication/m9"},"effectiveDateTime":"2023-01-02T10:00:00+01:00"}"#,
            r#"{"resourceType":"MedicationRequest","id":"mr1","subject":{"reference":"Patient/p1"},"medicationCodeableConcept":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/atc","code":"N02BE01"}]},"authoredOn":"2023-01"}"#,
            r##"{"resourceType":"MedicationStatement","id":"ms1","subject":{"reference":"Patient/p1"},"contained":[{"resourceType":"Medication","id":"local","code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/atc","code":"B01AC06"}]}}],"medicationReference":{"reference":"#local"}}"##,
        ]
        .join("\n"),
    )?;
    run(&[&run1], &out).await?;
    let uses = records(&out, "medication_uses")?;
    let get = |uses: &[BTreeMap<String, Option<String>>], r: &str| uses.iter().find(|u| u["resource"] == s(r)).cloned();
    let ma = get(&uses, "MedicationAdministration/ma1").ok_or_else(|| anyhow::anyhow!("ma1"))?;
    assert_eq!((ma["medication"].clone(), ma["med_code"].clone()), (s("Medication/m9"), None));
    let mr = get(&uses, "MedicationRequest/mr1").ok_or_else(|| anyhow::anyhow!("mr1"))?;
    assert_eq!(
        (mr["medication"].clone(), mr["med_code"].clone(), mr["kind"].clone()),
        (None, s("N02BE01"), s("request"))
    );
    assert_eq!((mr["time_start"].clone(), mr["time_end"].clone()), (s("2023-01-01"), s("2023-01-31")));
    let ms = get(&uses, "MedicationStatement/ms1").ok_or_else(|| anyhow::anyhow!("ms1"))?;
    assert_eq!(ms["med_code"], s("B01AC06"));
    let med_codings = |out: &Path| -> anyhow::Result<Vec<(Option<String>, Option<String>)>> {
        Ok(records(out, "codings")?
            .into_iter()
            .filter(|c| c["element"] == s("medication"))
            .map(|c| (c["resource"].clone(), c["code"].clone()))
            .collect())
    };
    assert_eq!(
        med_codings(&out)?,
        vec![(s("MedicationRequest/mr1"), s("N02BE01")), (s("MedicationStatement/ms1"), s("B01AC06"))]
    );

    // The Medication arrives in a later run, alone.
    let run2 = dir.path().join("run2.ndjson");
    write(
        &run2,
        r#"{"resourceType":"Medication","id":"m9","code":{"coding":[{"system":"http://fhir.de/CodeSystem/bfarm/atc","code":"L01XE01"},{"system":"http://example.org/pzn","code":"123"}]}}"#,
    )?;
    let s2 = run(&[&run2], &out).await?;
    assert_eq!(s2.resources["Medication"].imported, 1);
    let uses = records(&out, "medication_uses")?;
    let ma = get(&uses, "MedicationAdministration/ma1").ok_or_else(|| anyhow::anyhow!("ma1"))?;
    assert_eq!(
        (ma["med_system"].clone(), ma["med_code"].clone()),
        (s("http://fhir.de/CodeSystem/bfarm/atc"), s("L01XE01"))
    );
    assert_eq!(ma["time_start"], s("2023-01-02"));
    assert_eq!(
        med_codings(&out)?,
        vec![
            (s("MedicationAdministration/ma1"), s("123")),
            (s("MedicationAdministration/ma1"), s("L01XE01")),
            (s("MedicationRequest/mr1"), s("N02BE01")),
            (s("MedicationStatement/ms1"), s("B01AC06")),
        ]
    );
    // Importing the Medication again changes nothing (derived codings are not doubled).
    let before = all_rows(&out).await?;
    run(&[&run2], &out).await?;
    assert_eq!(all_rows(&out).await?, before);
    Ok(())
}
