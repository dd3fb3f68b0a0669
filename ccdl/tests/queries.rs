//! The MII's own CCDL queries (tests/data/mii-ccdl, Apache-2.0) through validation and
//! compilation with the built-in mapping, and invalid documents with their pointers.

use std::path::PathBuf;

use verbund_ccdl::dates::parse_date;
use verbund_ccdl::{CcdlErrors, Mapping, compile};
use verbund_proto::v1 as pb;

fn today() -> i32 {
    parse_date("2024-06-15").expect("date")
}

fn data(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mii-ccdl").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn compiled(rel: &str) -> pb::Cohort {
    compile(&data(rel), Mapping::builtin(), today()).unwrap_or_else(|e| panic!("{rel}:\n{e}"))
}

fn errors_of(json: &str) -> CcdlErrors {
    match compile(json, Mapping::builtin(), today()) {
        Ok(c) => panic!("expected errors, compiled {c:?}"),
        Err(e) => e,
    }
}

fn pointers(e: &CcdlErrors) -> Vec<&str> {
    e.0.iter().map(|e| e.pointer.as_str()).collect()
}

fn query_files() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["queries", "queries/returning-one-patient"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mii-ccdl").join(dir);
        for entry in std::fs::read_dir(&path).expect("query folder") {
            let name = entry.expect("entry").file_name().into_string().expect("utf-8 name");
            if name.ends_with(".json") {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out.sort();
    out
}

fn codings(m: &pb::CodeMatch) -> Vec<(&str, &str)> {
    m.codings.iter().map(|c| (c.system.as_str(), c.code.as_str())).collect()
}

fn prefixes(m: &pb::CodeMatch) -> Vec<(&str, &str)> {
    m.prefixes.iter().map(|c| (c.system.as_str(), c.code.as_str())).collect()
}

fn only(cohort_groups: &[pb::CriterionGroup]) -> &pb::Criterion {
    assert_eq!(cohort_groups.len(), 1, "one group");
    assert_eq!(cohort_groups[0].criteria.len(), 1, "one criterion");
    &cohort_groups[0].criteria[0]
}

const ICD_BFARM: &str = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
const ICD_DIMDI: &str = "http://fhir.de/CodeSystem/dimdi/icd-10-gm";
const SNOMED: &str = "http://snomed.info/sct";
const POLICY: &str = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3";

#[test]
fn every_query_validates_and_all_but_all_properties_compile() {
    let files = query_files();
    assert_eq!(files.len(), 27, "{files:?}");
    for file in &files {
        verbund_ccdl::validate(&data(file)).unwrap_or_else(|e| panic!("{file}:\n{e}"));
        if !file.ends_with("ccdl-all-properties.json") {
            let cohort = compiled(file);
            assert!(!cohort.inclusion.is_empty(), "{file}");
        }
    }
}

#[test]
fn all_properties_names_exactly_what_is_unmapped() {
    let e = errors_of(&data("queries/ccdl-all-properties.json"));
    let text = e.to_string();
    assert_eq!(
        pointers(&e),
        [
            // Diagnose "status" (system mii.abide): Condition has no such coded element.
            "/inclusionCriteria/3/0/attributeFilters/0/criteria/0/attributeFilters/0/attributeCode",
            // A gender concept without a system.
            "/exclusionCriteria/0/0/valueFilter/selectedConcepts/0",
            // Body temperature in context Patient.
            "/exclusionCriteria/2/1/termCodes/0",
        ],
        "{text}"
    );
    assert!(
        text.contains(
            "ccdl: /exclusionCriteria/2/1/termCodes/0: no mapping for context 'Patient', code system 'http://loinc.org' and code '8310-5' (criterion Patient 8310-5)"
        ),
        "{text}"
    );
    assert!(text.contains("no mapping for attribute 'status' (system 'mii.abide') of context 'Diagnose'"), "{text}");
}

#[test]
fn specimen_exclusion_shape() {
    let cohort = compiled("queries/SpecimenSQExclusion.json");
    let women = only(&cohort.inclusion);
    assert_eq!(women.dataset, "patients");
    assert_eq!(women.codes, None);
    let Some(pb::value_filter::Kind::Concept(gender)) = women.value.as_ref().and_then(|v| v.kind.as_ref()) else {
        panic!("gender concept: {women:?}")
    };
    assert_eq!(gender.element, "gender");
    assert_eq!(codings(gender), [("http://hl7.org/fhir/administrative-gender", "female")]);

    let specimen = only(&cohort.exclusion);
    assert_eq!(specimen.dataset, "specimens");
    let types = specimen.codes.as_ref().expect("codes");
    assert_eq!(types.element, "type");
    let mut codes: Vec<&str> = types.codings.iter().map(|c| c.code.as_str()).collect();
    assert!(types.codings.iter().all(|c| c.system == SNOMED));
    codes.sort_unstable();
    let mut want = [
        "119364003",
        "737089009",
        "442427000",
        "2421000181104",
        "122591000",
        "258590006",
        "122589008",
        "866035005",
        "122590004",
        "866034009",
        "442166002",
    ];
    want.sort_unstable();
    assert_eq!(codes, want);
    assert!(types.prefixes.is_empty());
    assert_eq!(specimen.attributes.len(), 1);
    let Some(pb::attribute_filter::Kind::Linked(linked)) = &specimen.attributes[0].kind else {
        panic!("linked: {specimen:?}")
    };
    assert_eq!(linked.via, "diagnosis");
    assert_eq!(linked.criteria.len(), 1);
    let diagnosis = &linked.criteria[0];
    assert_eq!(diagnosis.dataset, "conditions");
    let code = diagnosis.codes.as_ref().expect("codes");
    assert_eq!(code.element, "code");
    assert!(code.codings.is_empty());
    assert_eq!(prefixes(code), [(ICD_BFARM, "E13.9"), (ICD_DIMDI, "E13.9")]);
    assert_eq!(specimen.time, None);
}

#[test]
fn specimen_with_body_site_and_two_references() {
    let cohort = compiled("queries/SpecimenSQAndBodySite.json");
    let c = only(&cohort.inclusion);
    assert_eq!(c.attributes.len(), 2);
    let Some(pb::attribute_filter::Kind::Concept(site)) = &c.attributes[1].kind else { panic!("{c:?}") };
    assert_eq!(site.element, "bodySite");
    assert!(codings(site).contains(&("urn:oid:2.16.840.1.113883.6.43.1", "C44.6")));
    assert!(codings(site).contains(&("http://terminology.hl7.org/CodeSystem/icd-o-3", "C44.6")));

    let cohort = compiled("queries/SpecimenSQTwoReferenceCriteria.json");
    let c = only(&cohort.inclusion);
    let Some(pb::attribute_filter::Kind::Linked(linked)) = &c.attributes[0].kind else { panic!("{c:?}") };
    let firsts: Vec<&str> =
        linked.criteria.iter().map(|x| x.codes.as_ref().expect("codes").prefixes[0].code.as_str()).collect();
    assert_eq!(firsts, ["E13.9", "E13.1"]);

    let cohort = compiled("queries/SpecimenSQTwoInclusion.json");
    assert_eq!(cohort.inclusion.len(), 2);
    assert!(cohort.exclusion.is_empty());
}

#[test]
fn consent_policy_code() {
    let cohort = compiled("queries/consent.json");
    let c = only(&cohort.inclusion);
    assert_eq!(c.dataset, "consents");
    let codes = c.codes.as_ref().expect("codes");
    assert_eq!(codes.element, "provision.code");
    assert_eq!(codings(codes), [(POLICY, "2.16.840.1.113883.3.1937.777.24.5.3.8")]);
    assert!(codes.prefixes.is_empty() && c.attributes.is_empty() && c.time.is_none() && c.fixed.is_none());
}

#[test]
fn combined_consent() {
    let cohort = compiled("queries/returning-one-patient/Consent.json");
    let c = only(&cohort.inclusion);
    assert_eq!(c.dataset, "consents");
    let codes = c.codes.as_ref().expect("codes");
    assert_eq!(codes.element, "category");
    assert_eq!(codings(codes), [("http://loinc.org", "57016-8")]);
    let required: Vec<(&str, Vec<(&str, &str)>)> = c
        .attributes
        .iter()
        .map(|a| match &a.kind {
            Some(pb::attribute_filter::Kind::Concept(m)) => (m.element.as_str(), codings(m)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        required,
        [
            ("provision.code", vec![(POLICY, "2.16.840.1.113883.3.1937.777.24.5.3.8")]),
            ("provision.code", vec![(POLICY, "2.16.840.1.113883.3.1937.777.24.5.3.46")]),
        ]
    );
    let other = data("queries/returning-one-patient/Consent.json").replace("yes-yes-no-no", "no-no-no-no");
    let e = errors_of(&other);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/termCodes/0"]);
    assert!(e.to_string().contains("the mapping for this combined consent is not available"), "{e}");
}

#[test]
fn encounter_time_restriction_days() {
    let cohort = compiled("queries/EncounterInpatientEinrichtungTimeRestriction.json");
    let c = only(&cohort.inclusion);
    assert_eq!(c.dataset, "encounters");
    let codes = c.codes.as_ref().expect("codes");
    assert_eq!(codes.element, "class");
    assert_eq!(codings(codes), [("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP")]);
    let Some(pb::attribute_filter::Kind::Concept(level)) = &c.attributes[0].kind else { panic!("{c:?}") };
    assert_eq!(level.element, "type");
    assert_eq!(codings(level), [("http://fhir.de/CodeSystem/Kontaktebene", "einrichtungskontakt")]);
    let time = c.time.as_ref().expect("time");
    assert_eq!((time.start_column.as_str(), time.end_column.as_str()), ("period_start", "period_end"));
    // 2024-01-01 and 2024-02-15 as days since 1970-01-01.
    assert_eq!((time.after, time.before), (Some(19_723), Some(19_768)));
}

#[test]
fn diagnose_lab_procedure_and_medications() {
    let c = only(&compiled("queries/returning-one-patient/Diagnose-TimeRestriction.json").inclusion).clone();
    assert_eq!(c.dataset, "conditions");
    assert_eq!(prefixes(c.codes.as_ref().expect("codes")), [(ICD_BFARM, "S14.11"), (ICD_DIMDI, "S14.11")]);
    let t = c.time.expect("time");
    assert_eq!((t.start_column.as_str(), t.after, t.before), ("recorded_date", Some(19_389), Some(19_416)));

    let c = only(&compiled("queries/returning-one-patient/ObservationLab-TimeRestriction.json").inclusion).clone();
    assert_eq!(c.dataset, "observations");
    assert_eq!(codings(c.codes.as_ref().expect("codes")), [("http://loinc.org", "800-3")]);
    let t = c.time.expect("time");
    assert_eq!((t.start_column.as_str(), t.end_column.as_str()), ("effective_start", "effective_end"));
    assert_eq!(t.after, t.before);

    let c = only(&compiled("queries/returning-one-patient/Procedure.json").inclusion).clone();
    assert_eq!(c.dataset, "procedures");
    assert_eq!(c.codes.as_ref().expect("codes").prefixes[0].code, "5-403.05");

    for (file, kind) in [
        ("MedicationAdministration", "administration"),
        ("MedicationRequest", "request"),
        ("MedicationStatement", "statement"),
    ] {
        let c = only(&compiled(&format!("queries/returning-one-patient/{file}.json")).inclusion).clone();
        assert_eq!(c.dataset, "medication_uses");
        let codes = c.codes.as_ref().expect("codes");
        assert_eq!(codes.element, "medication");
        assert_eq!(
            codes.prefixes[0],
            pb::Coding { system: "http://fhir.de/CodeSystem/bfarm/atc".into(), code: "P01CA".into() }
        );
        let Some(pb::filter::Kind::Compare(k)) = c.fixed.as_ref().and_then(|f| f.kind.as_ref()) else {
            panic!("{c:?}")
        };
        assert_eq!(k.column, "kind");
        assert_eq!(k.value.as_ref().and_then(|v| v.value.clone()), Some(pb::literal::Value::String(kind.into())));
    }
}

#[test]
fn age_criterion_becomes_birth_date_bounds() {
    let cohort = compiled("queries/example-all-crits-time.json");
    assert_eq!(cohort.inclusion.len(), 10);
    let age = &cohort.inclusion[7].criteria[0];
    assert_eq!(age.dataset, "patients");
    assert!(age.value.is_none() && age.codes.is_none());
    // age = 20 years on 2024-06-15: born 2003-06-16 ..= 2004-06-15.
    let Some(pb::filter::Kind::And(both)) = age.fixed.as_ref().and_then(|f| f.kind.as_ref()) else { panic!("{age:?}") };
    let bounds: Vec<(i32, i32)> = both
        .operands
        .iter()
        .map(|f| match &f.kind {
            Some(pb::filter::Kind::Compare(c)) => match c.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(pb::literal::Value::Date(d)) => {
                    assert_eq!(c.column, "birth_date");
                    (c.op, *d)
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        bounds,
        [
            (pb::CompareOp::Gt as i32, parse_date("2003-06-15").expect("date")),
            (pb::CompareOp::Le as i32, parse_date("2004-06-15").expect("date")),
        ]
    );
}

const LAB: &str = r#"{"version": "2", "inclusionCriteria": [[
  {"context": {"code": "Diagnose", "system": "fdpg.mii.cds", "display": "Diagnose"},
   "termCodes": [{"code": "E11", "system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "display": ""}]}],
  [{"context": {"code": "Laboruntersuchung", "system": "fdpg.mii.cds", "display": "Lab"},
   "termCodes": [{"code": "718-7", "system": "http://loinc.org", "display": "Hb"}],
   "valueFilter": VALUE, "timeRestriction": TIME}]]}"#;

fn lab(value: &str, time: &str) -> String {
    LAB.replace("VALUE", value).replace("TIME", time)
}

const GOOD_VALUE: &str =
    r#"{"type": "quantity-comparator", "comparator": "gt", "value": 10, "unit": {"code": "g/dL", "display": "g/dL"}}"#;
const GOOD_TIME: &str = r#"{"afterDate": "2024-01-01"}"#;

#[test]
fn lab_quantity_compiles() {
    let cohort = compile(&lab(GOOD_VALUE, GOOD_TIME), Mapping::builtin(), today()).expect("compiles");
    let c = &cohort.inclusion[1].criteria[0];
    assert_eq!(
        c.value.as_ref().and_then(|v| v.kind.clone()),
        Some(pb::value_filter::Kind::Compare(pb::QuantityCompare {
            column: "value".into(),
            unit_column: "value_unit".into(),
            op: pb::CompareOp::Gt as i32,
            value: 10.0,
            unit: "g/dL".into(),
        }))
    );
    assert_eq!(c.time.as_ref().map(|t| (t.after, t.before)), Some((Some(19_723), None)));
    let range = r#"{"type": "quantity-range", "minValue": 1, "maxValue": 2}"#;
    let cohort = compile(&lab(range, GOOD_TIME), Mapping::builtin(), today()).expect("compiles");
    let Some(pb::value_filter::Kind::Range(r)) =
        cohort.inclusion[1].criteria[0].value.as_ref().and_then(|v| v.kind.clone())
    else {
        panic!("range")
    };
    assert_eq!((r.min, r.max, r.unit.as_str()), (1.0, 2.0, ""));
}

#[test]
fn invalid_documents_point_at_the_problem() {
    // Missing comparator: the schema's message, with the criterion named.
    let e = errors_of(&lab(r#"{"type": "quantity-comparator", "value": 3}"#, GOOD_TIME));
    assert_eq!(
        e.to_string(),
        "ccdl: /inclusionCriteria/1/0/valueFilter: \"comparator\" is a required property (criterion Laboruntersuchung 718-7)"
    );
    // Bad comparator.
    let e = errors_of(&lab(r#"{"type": "quantity-comparator", "comparator": "gte", "value": 3}"#, GOOD_TIME));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/valueFilter/comparator"], "{e}");
    // Range without maxValue.
    let e = errors_of(&lab(r#"{"type": "quantity-range", "minValue": 3}"#, GOOD_TIME));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/valueFilter"], "{e}");
    assert!(e.to_string().contains("maxValue"), "{e}");
    // minValue > maxValue.
    let e = errors_of(&lab(r#"{"type": "quantity-range", "minValue": 3, "maxValue": 2}"#, GOOD_TIME));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/valueFilter/minValue"], "{e}");
    // Not a date.
    let e = errors_of(&lab(GOOD_VALUE, r#"{"afterDate": "2024-13-01"}"#));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/timeRestriction/afterDate"], "{e}");
    // afterDate after beforeDate.
    let e = errors_of(&lab(GOOD_VALUE, r#"{"afterDate": "2024-03-01", "beforeDate": "2024-02-01"}"#));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/timeRestriction/afterDate"], "{e}");
    assert!(e.to_string().contains("afterDate 2024-03-01 is later than beforeDate 2024-02-01"), "{e}");
    // Empty time restriction.
    let e = errors_of(&lab(GOOD_VALUE, "{}"));
    assert_eq!(pointers(&e), ["/inclusionCriteria/1/0/timeRestriction"], "{e}");
    // Missing termCodes.
    let doc = lab(GOOD_VALUE, GOOD_TIME).replace(
        r#""termCodes": [{"code": "E11", "system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "display": ""}]"#,
        r#""display": "x""#,
    );
    let e = errors_of(&doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0"], "{e}");
    assert!(e.to_string().contains("\"termCodes\" is a required property"), "{e}");
    // Unknown context.
    let doc = lab(GOOD_VALUE, GOOD_TIME).replace("\"Diagnose\", \"system\"", "\"Diagnosis\", \"system\"");
    let e = errors_of(&doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/context/code"], "{e}");
    assert!(e.to_string().contains("unknown context 'Diagnosis'"), "{e}");
    // Unknown code system.
    let doc = lab(GOOD_VALUE, GOOD_TIME).replace("bfarm/icd-10-gm", "bfarm/icd-11");
    let e = errors_of(&doc);
    assert_eq!(
        e.to_string(),
        "ccdl: /inclusionCriteria/0/0/termCodes/0: no mapping for context 'Diagnose' and code system 'http://fhir.de/CodeSystem/bfarm/icd-11' (criterion Diagnose E11)"
    );
    // Several problems at once: every one is reported.
    let doc = lab(r#"{"type": "quantity-comparator", "comparator": "x"}"#, r#"{"afterDate": "2024-02-30"}"#);
    let e = errors_of(&doc);
    assert!(e.0.len() >= 3, "{e}");
    // Unknown version.
    let e = errors_of(&lab(GOOD_VALUE, GOOD_TIME).replace("\"version\": \"2\"", "\"version\": \"3\""));
    assert_eq!(pointers(&e), ["/version"], "{e}");
}

#[test]
fn unknown_attribute_and_wrong_filter_kind() {
    let doc = data("queries/EncounterInpatientEinrichtung.json")
        .replace("\"code\": \"Kontaktebene\"", "\"code\": \"Station\"");
    assert!(doc.contains("Station"));
    let e = errors_of(&doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/attributeFilters/0/attributeCode"], "{e}");
    // A concept filter on an age.
    let doc = r#"{"version": "2", "inclusionCriteria": [[{"context": {"code": "Patient", "system": "fdpg.mii.cds", "display": ""},
      "termCodes": [{"code": "424144002", "system": "http://snomed.info/sct", "display": ""}],
      "valueFilter": {"type": "concept", "selectedConcepts": [{"code": "x", "system": "y", "display": ""}]}}]]}"#;
    let e = errors_of(doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/valueFilter"], "{e}");
    // An age without a unit.
    let doc = r#"{"version": "2", "inclusionCriteria": [[{"context": {"code": "Patient", "system": "fdpg.mii.cds", "display": ""},
      "termCodes": [{"code": "424144002", "system": "http://snomed.info/sct", "display": ""}],
      "valueFilter": {"type": "quantity-comparator", "comparator": "ge", "value": 18}}]]}"#;
    let e = errors_of(doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/valueFilter/unit"], "{e}");
    // A time restriction on a context without time.
    let doc = data("queries/consent.json")
        .replace("\"context\":", "\"timeRestriction\": {\"afterDate\": \"2020-01-01\"}, \"context\":");
    let e = errors_of(&doc);
    assert_eq!(pointers(&e), ["/inclusionCriteria/0/0/timeRestriction"], "{e}");
}

fn diagnose(code: &str) -> String {
    format!(
        r#"{{"context": {{"code": "Diagnose", "system": "fdpg.mii.cds", "display": ""}}, "termCodes": [{{"code": "{code}", "system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "display": ""}}]}}"#
    )
}

#[test]
fn limits() {
    let group = format!("[{}]", diagnose("E11"));
    let doc = format!(r#"{{"version": "2", "inclusionCriteria": [{}]}}"#, vec![group.as_str(); 65].join(","));
    let e = errors_of(&doc);
    assert_eq!(pointers(&e), [""]);
    assert!(e.to_string().contains("65 groups"), "{e}");
    let group = format!("[{}]", vec![diagnose("E11"); 257].join(","));
    let doc = format!(r#"{{"version": "2", "inclusionCriteria": [{group}]}}"#);
    let e = errors_of(&doc);
    assert!(e.to_string().contains("257 criteria"), "{e}");
    let doc = format!(
        r#"{{"version": "2", "display": "{}", "inclusionCriteria": [[{}]]}}"#,
        "x".repeat(1 << 20),
        diagnose("E11")
    );
    assert!(errors_of(&doc).to_string().contains("bytes"));
    let doc = format!("{}{}", "[".repeat(40), "]".repeat(40));
    assert!(errors_of(&doc).to_string().contains("levels deep"));
    // A tree that expands one code to more than 50,000.
    let children: Vec<String> = (0..60_000).map(|i| format!("\"c{i}\"")).collect();
    let tree = format!(
        r#"[{{"context": {{"system": "fdpg.mii.cds", "code": "Specimen"}}, "system": "http://snomed.info/sct",
             "entries": [{{"key": "root", "children": [{}]}}]}}]"#,
        children.join(",")
    );
    let mapping = Mapping::from_json(include_str!("../mapping.json"), &tree).expect("mapping");
    let doc = data("queries/returning-one-patient/Specimen.json").replace("396997002", "root");
    let e = compile(&doc, &mapping, today()).expect_err("too many codes");
    assert!(e.to_string().contains("more than 50000 codes"), "{e}");
    let small = compile(&data("queries/returning-one-patient/Specimen.json"), &mapping, today()).expect("compiles");
    assert_eq!(small.inclusion[0].criteria[0].codes.as_ref().expect("codes").codings.len(), 1);
}

#[test]
fn mapping_from_json_round_trips_and_rejects_clashes() {
    let text = include_str!("../mapping.json");
    let trees = include_str!("../tree.json");
    let m = Mapping::from_json(text, trees).expect("mapping");
    assert!(m.knows_context("Diagnose"));
    let mut file: serde_json::Value = serde_json::from_str(text).expect("json");
    let rules = file["rules"].as_array_mut().expect("rules");
    let first = rules[4].clone();
    rules.push(first);
    assert!(Mapping::from_json(&file.to_string(), trees).is_err());
}
