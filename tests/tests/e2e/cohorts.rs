//! Cohort criteria (issue 13) on a real three-site network: clinical datasets in the shape
//! `verbund import` writes (docs/fhir-datasets.md), generated here row by row, and every
//! federated answer compared with a direct scan of the pooled rows in this file (a different
//! route from the node's joins).

use crate::attacks::{SITES, answered, dp_policy, raw_policy};
use datafusion::arrow::array::{Array, AsArray, Date32Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::datasource::MemTable;
use std::collections::BTreeSet;
use std::sync::Arc;
use verbund_node::catalogue::Catalogue;
use verbund_policies::Policy;
use verbund_proto::v1 as pb;
use verbund_tests::Network;

const ICD: &str = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const HBA1C: &str = "4548-4";
const SERUM: &str = "119364003";
/// The window of the lab criterion, in days since 1970-01-01.
const AFTER: i32 = 19_000;
const BEFORE: i32 = 19_400;

pub(crate) struct Condition {
    pub(crate) id: String,
    pub(crate) patient: String,
    pub(crate) code: &'static str,
    pub(crate) recorded: i32,
}
pub(crate) struct Lab {
    pub(crate) id: String,
    pub(crate) patient: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) day: i32,
}
pub(crate) struct Specimen {
    pub(crate) id: String,
    pub(crate) patient: String,
    /// The Condition its diagnosis extension names.
    pub(crate) diagnosis: String,
}

/// One site's clinical rows. Some specimens name a diagnosis of *another* patient: a linked
/// criterion must not match them.
pub(crate) struct Site {
    pub(crate) patients: Vec<(String, &'static str)>,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) labs: Vec<Lab>,
    pub(crate) specimens: Vec<Specimen>,
}

pub(crate) fn site(s: usize) -> Site {
    let mut site = Site { patients: vec![], conditions: vec![], labs: vec![], specimens: vec![] };
    for i in 0..240usize {
        let patient = format!("s{s}-p{i}");
        site.patients.push((patient.clone(), if (i + s).is_multiple_of(3) { "male" } else { "female" }));
        let mut condition = |code: &'static str, recorded: i32| {
            let id = format!("Condition/{patient}-{}", site.conditions.len());
            site.conditions.push(Condition { id: id.clone(), patient: patient.clone(), code, recorded });
            id
        };
        if i % 3 == 0 {
            condition("E11.9", 18_900 + (i as i32 * 7) % 600);
        }
        let e13 = (i % 7 == 0).then(|| condition(if i % 2 == 0 { "E13.90" } else { "E13.9" }, 19_100));
        if i % 5 == 0 {
            condition("I10", 19_200);
        }
        for k in 0..(1 + i % 3) {
            site.labs.push(Lab {
                id: format!("Observation/{patient}-{k}"),
                patient: patient.clone(),
                value: 5.0 + ((i * 13 + k * 7 + s) % 50) as f64 / 10.0,
                unit: if (i + k) % 11 == 0 { "mmol/mol" } else { "%" },
                day: 18_800 + ((i * 31 + k * 97) % 900) as i32,
            });
        }
        if e13.is_some() || i % 8 == 0 {
            // Its own E13 diagnosis when it has one, else (every other time) a diagnosis of
            // the patient before: a reference across patients, which must not link.
            let diagnosis = match (&e13, i) {
                (Some(id), _) => id.clone(),
                (None, i) if i % 8 == 0 && i > 0 => format!("Condition/s{s}-p{}-0", i - 1),
                _ => String::new(),
            };
            site.specimens.push(Specimen { id: format!("Specimen/{patient}"), patient: patient.clone(), diagnosis });
        }
    }
    site
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> Arc<dyn Array> {
    Arc::new(StringArray::from(values.into_iter().map(|v| (!v.is_empty()).then_some(v)).collect::<Vec<_>>()))
}

pub(crate) fn table(catalogue: &mut Catalogue, name: &str, batch: RecordBatch) {
    let columns: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let provider = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    catalogue.add_table(name, Arc::new(provider), "patient_id", &columns).unwrap();
}

pub(crate) fn catalogue(site: &Site) -> Catalogue {
    let mut catalogue = Catalogue::new();
    let p = &site.patients;
    let patients = RecordBatch::try_from_iter([
        ("resource", strings(p.iter().map(|(id, _)| id.as_str())).clone()),
        ("patient_id", strings(p.iter().map(|(id, _)| id.as_str()))),
        ("gender", strings(p.iter().map(|(_, g)| *g))),
    ])
    .unwrap();
    table(&mut catalogue, "patients", patients);
    let c = &site.conditions;
    let conditions = RecordBatch::try_from_iter([
        ("resource", strings(c.iter().map(|c| c.id.as_str()))),
        ("patient_id", strings(c.iter().map(|c| c.patient.as_str()))),
        ("code", strings(c.iter().map(|c| c.code))),
        ("recorded_date", Arc::new(Date32Array::from(c.iter().map(|c| c.recorded).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    table(&mut catalogue, "conditions", conditions);
    let l = &site.labs;
    let labs = RecordBatch::try_from_iter([
        ("resource", strings(l.iter().map(|l| l.id.as_str()))),
        ("patient_id", strings(l.iter().map(|l| l.patient.as_str()))),
        ("code", strings(l.iter().map(|_| HBA1C))),
        ("value", Arc::new(Float64Array::from(l.iter().map(|l| l.value).collect::<Vec<_>>())) as _),
        ("value_unit", strings(l.iter().map(|l| l.unit))),
        ("effective_start", Arc::new(Date32Array::from(l.iter().map(|l| l.day).collect::<Vec<_>>())) as _),
        ("effective_end", Arc::new(Date32Array::from(l.iter().map(|l| l.day).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    table(&mut catalogue, "observations", labs);
    let sp = &site.specimens;
    let specimens = RecordBatch::try_from_iter([
        ("resource", strings(sp.iter().map(|s| s.id.as_str()))),
        ("patient_id", strings(sp.iter().map(|s| s.patient.as_str()))),
        ("diagnosis", strings(sp.iter().map(|s| s.diagnosis.as_str()))),
    ])
    .unwrap();
    table(&mut catalogue, "specimens", specimens);
    // codings: every code above, as the importer writes them.
    let mut rows: Vec<(&str, &str, &str, &str, &str)> = Vec::new();
    rows.extend(
        p.iter().map(|(id, g)| (id.as_str(), id.as_str(), "gender", "http://hl7.org/fhir/administrative-gender", *g)),
    );
    rows.extend(c.iter().map(|c| (c.id.as_str(), c.patient.as_str(), "code", ICD, c.code)));
    rows.extend(l.iter().map(|l| (l.id.as_str(), l.patient.as_str(), "code", LOINC, HBA1C)));
    rows.extend(sp.iter().map(|s| (s.id.as_str(), s.patient.as_str(), "type", SNOMED, SERUM)));
    let codings = RecordBatch::try_from_iter([
        ("resource", strings(rows.iter().map(|r| r.0))),
        ("patient_id", strings(rows.iter().map(|r| r.1))),
        ("element", strings(rows.iter().map(|r| r.2))),
        ("system", strings(rows.iter().map(|r| r.3))),
        ("code", strings(rows.iter().map(|r| r.4))),
    ])
    .unwrap();
    table(&mut catalogue, "codings", codings);
    catalogue
}

pub(crate) async fn network(policy: Policy) -> (Network, Vec<Site>) {
    let mut network = Network::start(&SITES).await;
    let mut sites = Vec::new();
    for (i, name) in SITES.iter().enumerate() {
        let data = site(i);
        let node = network.node_with_noise_key(name, catalogue(&data), policy.clone(), 60 + i as u8);
        network.add_node(node).await;
        sites.push(data);
    }
    (network, sites)
}

fn coded(element: &str, system: &str, codes: &[&str], prefixes: &[&str]) -> pb::CodeMatch {
    let coding = |c: &&str| pb::Coding { system: system.into(), code: c.to_string() };
    pb::CodeMatch {
        element: element.into(),
        codings: codes.iter().map(coding).collect(),
        prefixes: prefixes.iter().map(coding).collect(),
    }
}

pub(crate) fn diagnosis(codes: &[&str], prefixes: &[&str]) -> pb::Criterion {
    pb::Criterion {
        dataset: "conditions".into(),
        codes: Some(coded("code", ICD, codes, prefixes)),
        ..Default::default()
    }
}

/// HbA1c above `above` %, measured in [AFTER, BEFORE].
fn hba1c_above(above: f64) -> pb::Criterion {
    pb::Criterion {
        dataset: "observations".into(),
        codes: Some(coded("code", LOINC, &[HBA1C], &[])),
        value: Some(pb::ValueFilter {
            kind: Some(pb::value_filter::Kind::Compare(pb::QuantityCompare {
                column: "value".into(),
                unit_column: "value_unit".into(),
                op: pb::CompareOp::Gt as i32,
                value: above,
                unit: "%".into(),
            })),
        }),
        time: Some(pb::TimeRange {
            start_column: "effective_start".into(),
            end_column: "effective_end".into(),
            after: Some(AFTER),
            before: Some(BEFORE),
        }),
        ..Default::default()
    }
}

/// A serum specimen whose diagnosis is one of the patient's own E13.9* conditions.
fn serum_for_e13() -> pb::Criterion {
    pb::Criterion {
        dataset: "specimens".into(),
        codes: Some(coded("type", SNOMED, &[SERUM], &[])),
        attributes: vec![pb::AttributeFilter {
            kind: Some(pb::attribute_filter::Kind::Linked(pb::LinkedCriteria {
                via: "diagnosis".into(),
                criteria: vec![diagnosis(&[], &["E13.9"])],
            })),
        }],
        ..Default::default()
    }
}

pub(crate) fn group(criteria: Vec<pb::Criterion>) -> pb::CriterionGroup {
    pb::CriterionGroup { criteria }
}

async fn count(network: &Network, cohort: pb::Cohort) -> (Option<i64>, pb::QueryResponse) {
    let request = pb::ResearchQuery { cohort: Some(cohort), ..Default::default() };
    let (batch, response) = network.query_with(request).await.unwrap_or_else(|e| panic!("cohort count: {e}"));
    assert_eq!(batch.schema().field(0).name(), "patients");
    let c = batch.column(0);
    (c.is_valid(0).then(|| c.as_primitive::<Int64Type>().value(0)), response)
}

// ---- The independent route: direct scans of the pooled rows ----

pub(crate) fn with_prefix(sites: &[Site], prefix: &str) -> BTreeSet<String> {
    sites.iter().flat_map(|s| &s.conditions).filter(|c| c.code.starts_with(prefix)).map(|c| c.patient.clone()).collect()
}

fn hba1c_patients(sites: &[Site], above: f64) -> BTreeSet<String> {
    let labs = sites.iter().flat_map(|s| &s.labs);
    labs.filter(|l| l.unit == "%" && l.value > above && (AFTER..=BEFORE).contains(&l.day))
        .map(|l| l.patient.clone())
        .collect()
}

fn serum_e13_patients(sites: &[Site]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for site in sites {
        for s in &site.specimens {
            let own_e13 = site
                .conditions
                .iter()
                .any(|c| c.id == s.diagnosis && c.patient == s.patient && c.code.starts_with("E13.9"));
            if own_e13 {
                out.insert(s.patient.clone());
            }
        }
    }
    out
}

#[tokio::test]
async fn cohort_counts_equal_a_direct_scan_of_the_pooled_rows() {
    let (network, sites) = network(raw_policy()).await;
    counts_equal_a_direct_scan(&network, &sites).await;
}

/// With the clinical datasets labelled as imported from FHIR, criteria are answered from the
/// node's in-memory index; turned off, by DataFusion plans over the same rows. Both give what
/// the direct scan gives.
#[tokio::test]
async fn the_criteria_index_and_the_scans_give_the_same_cohorts() {
    let mut network = Network::start(&SITES).await;
    let mut sites = Vec::new();
    let mut nodes = Vec::new();
    for (i, name) in SITES.iter().enumerate() {
        let data = site(i);
        let mut catalogue = catalogue(&data);
        // (The patients' resources here are bare ids, not `Patient/<id>`: their gender codings
        // are not indexed, and no criterion below reads them; a count's base is.)
        for dataset in ["patients", "conditions", "observations", "specimens"] {
            catalogue.set_model(dataset, &format!("fhir/{dataset}")).unwrap();
        }
        let node = Arc::new(network.node_with_noise_key(name, catalogue, raw_policy(), 60 + i as u8));
        network.add_node(node.clone()).await;
        nodes.push(node);
        sites.push(data);
    }
    counts_equal_a_direct_scan(&network, &sites).await;
    assert!(nodes.iter().all(|n| n.engine().criteria_answered_by_index() > 0), "the index answered");
    for node in &nodes {
        node.engine().use_criteria_index(false);
    }
    counts_equal_a_direct_scan(&network, &sites).await;
}

async fn counts_equal_a_direct_scan(network: &Network, sites: &[Site]) {
    // (E11* or I10) and HbA1c > 7 % in the window, excluding a serum specimen for their E13.9*.
    let cohort = pb::Cohort {
        inclusion: vec![group(vec![diagnosis(&["I10"], &["E11"])]), group(vec![hba1c_above(7.0)])],
        exclusion: vec![group(vec![serum_for_e13()])],
    };
    let (got, response) = count(network, cohort).await;
    assert_eq!(answered(&response), 3, "{response:?}");
    let included: BTreeSet<String> =
        &(&with_prefix(sites, "E11") | &with_prefix(sites, "I10")) & &hba1c_patients(sites, 7.0);
    let expected = &included - &serum_e13_patients(sites);
    assert!(
        expected.len() > 10 && expected.len() < included.len(),
        "the test data exercises every part: {} of {}",
        expected.len(),
        included.len()
    );
    assert_eq!(got, Some(expected.len() as i64));

    // A specimen that names another patient's diagnosis links to nothing: only the patients'
    // own E13.9* diagnoses count.
    let specimens = sites.iter().flat_map(|s| &s.specimens);
    let cross = specimens
        .filter(|s| !s.diagnosis.is_empty() && !s.diagnosis.starts_with(&format!("Condition/{}-", s.patient)))
        .count();
    assert!(cross > 0, "the data has references across patients");
    let (got, _) =
        count(network, pb::Cohort { inclusion: vec![group(vec![serum_for_e13()])], exclusion: vec![] }).await;
    assert_eq!(got, Some(serum_e13_patients(sites).len() as i64));

    // Exclusion only: every patient but those with an E11* diagnosis.
    let all: usize = sites.iter().map(|s| s.patients.len()).sum();
    let (got, _) =
        count(network, pb::Cohort { inclusion: vec![], exclusion: vec![group(vec![diagnosis(&[], &["E11"])])] }).await;
    assert_eq!(got, Some((all - with_prefix(sites, "E11").len()) as i64));

    // An exclusion group needs every criterion: E11* AND HbA1c > 9 %.
    let both = group(vec![diagnosis(&[], &["E11"]), hba1c_above(9.0)]);
    let (got, _) = count(network, pb::Cohort { inclusion: vec![], exclusion: vec![both] }).await;
    let excluded = &with_prefix(sites, "E11") & &hba1c_patients(sites, 9.0);
    assert!(!excluded.is_empty());
    assert_eq!(got, Some((all - excluded.len()) as i64));
}

#[tokio::test]
async fn a_cohort_is_the_population_of_an_aggregate_query() {
    let (network, sites) = network(raw_policy()).await;
    let request = pb::ResearchQuery {
        sql: "SELECT avg(value) AS mean, count(*) AS n FROM observations WHERE value_unit = '%'".into(),
        cohort: Some(pb::Cohort { inclusion: vec![group(vec![diagnosis(&[], &["E11"])])], exclusion: vec![] }),
        ..Default::default()
    };
    let (batch, response) = network.query_with(request).await.unwrap();
    assert_eq!(answered(&response), 3, "{response:?}");
    let t2d = with_prefix(&sites, "E11");
    let values: Vec<f64> = sites
        .iter()
        .flat_map(|s| &s.labs)
        .filter(|l| l.unit == "%" && t2d.contains(&l.patient))
        .map(|l| l.value)
        .collect();
    let all_labs = sites.iter().flat_map(|s| &s.labs).filter(|l| l.unit == "%").count();
    assert!(values.len() < all_labs, "the cohort narrows the population");
    let mean = batch.column(0).as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(0);
    assert!((mean - values.iter().sum::<f64>() / values.len() as f64).abs() < 1e-9);
    assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), values.len() as i64);
}

#[tokio::test]
async fn bad_cohorts_get_clear_errors_before_any_site_runs_them() {
    let (network, _) = network(raw_policy()).await;
    let mut late = hba1c_above(7.0);
    late.time.as_mut().unwrap().start_column = "recorded_date".into();
    let cases = [
        (
            pb::Cohort { inclusion: vec![group(vec![late])], exclusion: vec![] },
            "cohort inclusion[0][0].time: unknown column 'recorded_date'",
        ),
        (pb::Cohort::default(), "a cohort needs at least one inclusion or exclusion group"),
        (
            pb::Cohort {
                inclusion: vec![group(vec![pb::Criterion { dataset: "nope".into(), ..Default::default() }])],
                exclusion: vec![],
            },
            "cohort inclusion[0][0]: unknown dataset 'nope'",
        ),
    ];
    for (cohort, says) in cases {
        let request = pb::ResearchQuery { cohort: Some(cohort), ..Default::default() };
        let e = network.query_with(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(says), "{} does not say {says}", e.message());
    }
}

#[tokio::test]
async fn under_differential_privacy_a_cohort_count_is_noisy_charged_and_repeatable() {
    let mut policy = dp_policy(10.0);
    policy.datasets.clear();
    let (network, sites) = network(policy).await;
    let cohort = pb::Cohort { inclusion: vec![group(vec![diagnosis(&[], &["E11"])])], exclusion: vec![] };
    let truth = with_prefix(&sites, "E11").len() as f64;
    let (first, response) = count(&network, cohort.clone()).await;
    assert_eq!(answered(&response), 3, "{response:?}");
    let first = first.expect("240 patients per site is far above every floor") as f64;
    // Three sites, ε = 1 each, sensitivity 1: the sum of three discrete Laplace(1) draws.
    assert!((first - truth).abs() <= 30.0, "{first} vs {truth}");
    assert!(response.sites.iter().all(|s| s.cost.as_ref().is_some_and(|c| c.epsilon > 0.0)), "{response:?}");
    let (again, response) = count(&network, cohort).await;
    assert_eq!(again.map(|v| v as f64), Some(first), "a repeat gets the same noise");
    assert!(response.sites.iter().all(|s| s.cost.as_ref().is_some_and(|c| c.repeat)), "{response:?}");
}

// ---- Consent and patients' own preferences ----

const MDAT: &str = "2.16.840.1.113883.3.1937.777.24.5.3.8";
/// At site-a: s0-p5 objects to commercial research (active, open-ended); s0-p7's objection
/// ended long ago, s0-p11's Consent is inactive: neither is honoured. Every even patient
/// permitted MDAT use; s0-p4 revoked it later (a deny of the same code).
fn provisions(site: usize) -> RecordBatch {
    // (patient, status, type, code, purpose system, period end)
    type Row<'a> = (String, &'a str, &'a str, &'a str, &'a str, Option<i32>);
    let mut rows: Vec<Row> = Vec::new();
    if site == 0 {
        let purpose = verbund_node::consent::PURPOSE_SYSTEM;
        rows.push(("s0-p5".into(), "active", "deny", "", purpose, None));
        rows.push(("s0-p7".into(), "active", "deny", "", purpose, Some(10_000)));
        rows.push(("s0-p11".into(), "inactive", "deny", "", purpose, None));
        rows.push(("s0-p4".into(), "active", "deny", MDAT, "", None));
    }
    for i in (0..240).step_by(2) {
        rows.push((format!("s{site}-p{i}"), "active", "permit", MDAT, "", None));
    }
    let text = |f: &dyn Fn(&Row) -> String| {
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| {
                    let v = f(r);
                    (!v.is_empty()).then_some(v)
                })
                .collect::<Vec<_>>(),
        )) as Arc<dyn Array>
    };
    RecordBatch::try_from_iter([
        ("resource", text(&|r| format!("Consent/{}", r.0))),
        ("patient_id", text(&|r| r.0.clone())),
        ("status", text(&|r| r.1.to_string())),
        ("provision_type", text(&|r| r.2.to_string())),
        ("code", text(&|r| r.3.to_string())),
        ("purpose_system", text(&|r| r.4.to_string())),
        ("purpose_code", text(&|r| if r.4.is_empty() { String::new() } else { "commercial".into() })),
        ("period_start", Arc::new(Date32Array::from(rows.iter().map(|r| r.5.map(|_| 9_000)).collect::<Vec<_>>())) as _),
        ("period_end", Arc::new(Date32Array::from(rows.iter().map(|r| r.5).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

async fn consent_network(purpose: &str, require: &[&str]) -> (Network, Vec<Site>) {
    let mut policy = raw_policy();
    policy.projects[0].purpose = Some(purpose.into());
    policy.consent.require = require.iter().map(|c| c.to_string()).collect();
    let mut network = Network::start(&SITES).await;
    let mut sites = Vec::new();
    for (i, name) in SITES.iter().enumerate() {
        let data = site(i);
        let mut catalogue = catalogue(&data);
        table(&mut catalogue, "consent_provisions", provisions(i));
        network.add_node(network.node(name, catalogue, policy.clone())).await;
        sites.push(data);
    }
    (network, sites)
}

/// Every kind of answer, as numbers: a count, a grouped count (female, male), a mean, a
/// histogram's bins and a cohort count.
async fn answers(network: &Network) -> Vec<f64> {
    let mut out = Vec::new();
    let ask = |sql: &'static str| async move {
        let (batch, response) = network.query(sql).await.unwrap();
        assert_eq!(answered(&response), 3, "{sql}: {response:?}");
        batch
    };
    let as_text = |batch: &RecordBatch, c: usize| {
        let column =
            datafusion::arrow::compute::cast(batch.column(c), &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
        (0..batch.num_rows()).map(|r| column.as_string::<i32>().value(r).to_string()).collect::<Vec<_>>()
    };
    let number = |text: &str| text.parse::<f64>().unwrap();
    out.push(number(&as_text(&ask("SELECT count(DISTINCT patient_id) AS n FROM patients").await, 0)[0]));
    let grouped = ask("SELECT gender, count(*) AS n FROM patients GROUP BY gender").await;
    let mut pairs: Vec<(String, String)> = as_text(&grouped, 0).into_iter().zip(as_text(&grouped, 1)).collect();
    pairs.sort();
    out.extend(pairs.iter().map(|(_, n)| number(n)));
    out.push(number(&as_text(&ask("SELECT avg(value) AS m FROM observations WHERE value_unit = '%'").await, 0)[0]));
    // A histogram prints as "[1, 2, ...]".
    let histogram = as_text(&ask("SELECT histogram(value, 5, 0.5, 10) AS h FROM observations").await, 0).remove(0);
    out.extend(histogram.trim_matches(['[', ']']).split(',').map(|v| number(v.trim())));
    let hypertension = pb::Cohort { inclusion: vec![group(vec![diagnosis(&["I10"], &[])])], exclusion: vec![] };
    out.push(count(network, hypertension).await.0.unwrap() as f64);
    out
}

/// The same answers computed directly from the pooled rows, without `excluded` patients.
fn expected(sites: &[Site], excluded: &BTreeSet<String>) -> Vec<f64> {
    let counted = |p: &String| !excluded.contains(p);
    let patients: Vec<&(String, &str)> = sites.iter().flat_map(|s| &s.patients).filter(|p| counted(&p.0)).collect();
    let mut out = vec![patients.len() as f64];
    for gender in ["female", "male"] {
        out.push(patients.iter().filter(|p| p.1 == gender).count() as f64);
    }
    let labs: Vec<&Lab> = sites.iter().flat_map(|s| &s.labs).filter(|l| counted(&l.patient)).collect();
    let percent: Vec<f64> = labs.iter().filter(|l| l.unit == "%").map(|l| l.value).collect();
    out.push(percent.iter().sum::<f64>() / percent.len() as f64);
    let mut bins = [0f64; 10];
    for l in &labs {
        let bin = ((l.value - 5.0) / 0.5).floor();
        if (0.0..10.0).contains(&bin) {
            bins[bin as usize] += 1.0;
        }
    }
    out.extend(bins);
    let hypertensive: BTreeSet<&String> = sites
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.code == "I10" && counted(&c.patient))
        .map(|c| &c.patient)
        .collect();
    out.push(hypertensive.len() as f64);
    out
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
}

#[tokio::test]
async fn an_objection_removes_exactly_that_patient_from_every_answer() {
    let (academic, sites) = consent_network("academic", &[]).await;
    let (commercial, _) = consent_network("commercial", &[]).await;
    let none = BTreeSet::new();
    let objector: BTreeSet<String> = ["s0-p5".to_string()].into();
    let a = answers(&academic).await;
    let c = answers(&commercial).await;
    assert_close(&a, &expected(&sites, &none));
    assert_close(&c, &expected(&sites, &objector));
    // The objector (a woman with two HbA1c values and hypertension) is in every kind of
    // answer, so every kind changes: the count, her group, the mean, the histogram, the cohort.
    let differs = |i: usize| (a[i] - c[i]).abs() > 1e-12;
    assert!(differs(0) && differs(1) && differs(3) && differs(a.len() - 1), "{a:?} vs {c:?}");
    assert!((4..14).any(differs), "the histogram shows the objection: {a:?} vs {c:?}");
    assert!(!differs(2), "men are unaffected");
}

#[tokio::test]
async fn a_required_consent_counts_only_patients_who_gave_it() {
    let (network, sites) = consent_network("academic", &[MDAT]).await;
    // Odd patients gave no consent; s0-p4 revoked hers.
    let excluded: BTreeSet<String> = sites
        .iter()
        .flat_map(|s| &s.patients)
        .map(|p| p.0.clone())
        .filter(|p| {
            p == "s0-p4" || p.rsplit('p').next().and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i % 2 == 1)
        })
        .collect();
    assert!(excluded.len() > 300);
    assert_close(&answers(&network).await, &expected(&sites, &excluded));

    // Without consent data, a site that requires consent answers nothing.
    let mut policy = raw_policy();
    policy.consent.require = vec![MDAT.into()];
    let mut bare = Network::start(&["site-a"]).await;
    bare.add_node(bare.node("site-a", catalogue(&site(0)), policy)).await;
    let (_, response) = bare.query("SELECT count(*) AS n FROM patients").await.unwrap();
    assert_eq!(answered(&response), 0);
    assert!(crate::attacks::refusals(&response)[0].contains("consent_provisions"), "{response:?}");
}

// ---- CCDL through the coordinator ----

fn ccdl_diagnosis(code: &str, extra: &str) -> String {
    format!(
        r#"{{"version": "2", "inclusionCriteria": [[{{
            "context": {{"code": "Diagnose", "display": "Diagnose", "system": "fdpg.mii.cds", "version": "1.0.0"}},
            "termCodes": [{{"code": "{code}", "display": "", "system": "{ICD}"}}]{extra}
        }}]]}}"#
    )
}

#[tokio::test]
async fn a_ccdl_query_is_translated_checked_and_counted_across_sites() {
    let (network, sites) = network(raw_policy()).await;
    // ICD-10-GM expands by prefix: E13 is E13.9 and E13.90.
    let request = pb::ResearchQuery { ccdl: ccdl_diagnosis("E13", ""), ..Default::default() };
    let (batch, response) = network.query_with(request).await.unwrap();
    assert_eq!(answered(&response), 3, "{response:?}");
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), with_prefix(&sites, "E13").len() as i64);

    // A time restriction on the recorded date: only E11.9 diagnoses recorded from 1 Jan 2022.
    let window = r#", "timeRestriction": {"afterDate": "2022-01-01"}"#;
    let request = pb::ResearchQuery { ccdl: ccdl_diagnosis("E11.9", window), ..Default::default() };
    let (batch, _) = network.query_with(request).await.unwrap();
    let recorded_since: BTreeSet<&String> = sites
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.code == "E11.9" && c.recorded >= 18_993)
        .map(|c| &c.patient)
        .collect();
    assert!(!recorded_since.is_empty() && recorded_since.len() < with_prefix(&sites, "E11").len());
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), recorded_since.len() as i64);

    // Every problem is reported at its place in the document, before any site runs anything.
    let bad = ccdl_diagnosis("E11.9", r#", "timeRestriction": {"afterDate": "2022-13-01"}"#);
    let e = network.query_with(pb::ResearchQuery { ccdl: bad, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("/inclusionCriteria/0/0/timeRestriction/afterDate"), "{}", e.message());
    let both = pb::ResearchQuery {
        ccdl: ccdl_diagnosis("E11.9", ""),
        cohort: Some(pb::Cohort { inclusion: vec![group(vec![diagnosis(&["I10"], &[])])], exclusion: vec![] }),
        ..Default::default()
    };
    assert_eq!(network.query_with(both).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}
