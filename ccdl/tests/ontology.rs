//! `import_ontology` on the sq2cql fixtures (tests/data/mii-ccdl/mapping) and on entries
//! shaped as the README describes.

use verbund_ccdl::{Mapping, compile, import_ontology};
use verbund_proto::v1 as pb;

const CLI_MAPPING: &str = include_str!("data/mii-ccdl/mapping/cli.mapping.json");
const CLI_TREE: &str = include_str!("data/mii-ccdl/mapping/cli.concept-tree.json");

fn query(context: &str, system: &str, code: &str, extra: &str) -> String {
    format!(
        r#"{{"version": "2", "inclusionCriteria": [[{{"context": {{"code": "{context}", "system": "fdpg.mii.cds", "display": ""}},
        "termCodes": [{{"code": "{code}", "system": "{system}", "display": ""}}]{extra}}}]]}}"#
    )
}

#[test]
fn cli_fixture_converts_and_compiles() {
    let (mapping, tree) = import_ontology(CLI_MAPPING, CLI_TREE).expect("converts");
    let m = Mapping::from_json(&mapping, &tree).expect("loads");
    let icd = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
    let cohort = compile(&query("Diagnose", icd, "C71.1", ""), &m, 0).expect("compiles");
    let c = &cohort.inclusion[0].criteria[0];
    assert_eq!(c.dataset, "conditions");
    let codes = c.codes.as_ref().expect("codes");
    assert_eq!((codes.element.as_str(), codes.codings.len()), ("code", 1));
    assert_eq!(codes.codings[0], pb::Coding { system: icd.into(), code: "C71.1".into() });
    // A code the ontology does not list is an error, not a drop.
    let e = compile(&query("Diagnose", icd, "C71.2", ""), &m, 0).expect_err("unmapped");
    assert_eq!(e.0[0].pointer, "/inclusionCriteria/0/0/termCodes/0");
}

#[test]
fn diagnostic_report_fixture_is_refused_by_name() {
    let e = import_ontology(
        include_str!("data/mii-ccdl/mapping/DiagnosticReport.mapping_cql.json"),
        include_str!("data/mii-ccdl/mapping/DiagnosticReport.mapping_tree.json"),
    )
    .expect_err("no dataset for DiagnosticReport");
    assert!(e.to_string().contains("resource type DiagnosticReport has no dataset"), "{e}");
}

const README_SHAPED: &str = r#"[
  {"context": {"system": "fdpg.mii.cds", "code": "Specimen"}, "key": {"system": "http://snomed.info/sct", "code": "119364003"},
   "resourceType": "Specimen",
   "attributes": [
     {"key": {"system": "http://hl7.org/fhir/StructureDefinition", "code": "festgestellteDiagnose"},
      "path": "extension.where(url='https://www.medizininformatik-initiative.de/fhir/ext/modul-biobank/StructureDefinition/Diagnose').first().value.as(Reference).reference",
      "types": ["Reference"], "referenceTargetType": "Condition"},
     {"key": {"system": "http://hl7.org/fhir/StructureDefinition", "code": "icd-o-3"}, "path": "collection.bodySite", "types": ["CodeableConcept"]}],
   "timeRestriction": {"path": "collection.collected", "types": ["dateTime", "Period"]}},
  {"context": {"system": "fdpg.mii.cds", "code": "Specimen"}, "key": {"system": "http://snomed.info/sct", "code": "442166002"},
   "resourceType": "Specimen",
   "attributes": [
     {"key": {"system": "http://hl7.org/fhir/StructureDefinition", "code": "festgestellteDiagnose"},
      "path": "extension.where(url='https://www.medizininformatik-initiative.de/fhir/ext/modul-biobank/StructureDefinition/Diagnose').first().value.as(Reference).reference",
      "types": ["Reference"], "referenceTargetType": "Condition"},
     {"key": {"system": "http://hl7.org/fhir/StructureDefinition", "code": "icd-o-3"}, "path": "collection.bodySite", "types": ["CodeableConcept"]}],
   "timeRestriction": {"path": "collection.collected", "types": ["dateTime", "Period"]}},
  {"context": {"system": "fdpg.mii.cds", "code": "Diagnose"}, "key": {"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "E13.9"},
   "resourceType": "Condition", "timeRestriction": {"path": "recordedDate", "types": ["dateTime"]}},
  {"context": {"system": "fdpg.mii.cds", "code": "Einwilligung"}, "key": {"system": "fdpg.consent.combined", "code": "yes-yes-no-no"},
   "resourceType": "Consent", "primaryCode": {"system": "http://loinc.org", "code": "57016-8"},
   "fixedCriteria": [{"path": "provision.provision.code", "types": ["CodeableConcept"],
     "value": [{"system": "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3", "code": "2.16.840.1.113883.3.1937.777.24.5.3.8"},
               {"system": "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3", "code": "2.16.840.1.113883.3.1937.777.24.5.3.46"}]}]},
  {"context": {"system": "fdpg.mii.cds", "code": "Molekulargenetischer Befundbericht"}, "key": {"system": "http://loinc.org", "code": "51969-4"},
   "resourceType": "DiagnosticReport"}
]"#;

const README_TREE: &str = r#"[{"context": {"system": "fdpg.mii.cds", "code": "Specimen"}, "system": "http://snomed.info/sct",
  "entries": [{"key": "119364003", "parents": [], "children": ["442166002", "999"]}, {"key": "442166002", "parents": ["119364003"], "children": []}]}]"#;

#[test]
fn readme_shaped_entries_convert() {
    let (mapping, tree) = import_ontology(README_SHAPED, README_TREE).expect("converts");
    assert!(mapping.contains("resource type DiagnosticReport has no dataset"), "{mapping}");
    let m = Mapping::from_json(&mapping, &tree).expect("loads");
    // The two Specimen entries merge into one rule with two codes.
    assert_eq!(m.file().rules.len(), 3, "{mapping}");
    let reference = r#", "attributeFilters": [{"type": "reference",
        "attributeCode": {"code": "festgestellteDiagnose", "system": "http://hl7.org/fhir/StructureDefinition", "display": ""},
        "criteria": [{"context": {"code": "Diagnose", "system": "fdpg.mii.cds", "display": ""},
          "termCodes": [{"code": "E13.9", "system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "display": ""}]}]}],
        "timeRestriction": {"beforeDate": "2020-01-01"}"#;
    let cohort =
        compile(&query("Specimen", "http://snomed.info/sct", "119364003", reference), &m, 0).expect("compiles");
    let c = &cohort.inclusion[0].criteria[0];
    assert_eq!(c.dataset, "specimens");
    // 999 is in the tree but has no entry: dropped.
    let codes: Vec<&str> = c.codes.as_ref().expect("codes").codings.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(codes, ["119364003", "442166002"]);
    let Some(pb::attribute_filter::Kind::Linked(l)) = &c.attributes[0].kind else { panic!("{c:?}") };
    assert_eq!((l.via.as_str(), l.criteria[0].dataset.as_str()), ("diagnosis", "conditions"));
    assert_eq!(c.time.as_ref().map(|t| t.start_column.as_str()), Some("collected_start"));

    let cohort =
        compile(&query("Einwilligung", "fdpg.consent.combined", "yes-yes-no-no", ""), &m, 0).expect("compiles");
    let c = &cohort.inclusion[0].criteria[0];
    assert_eq!(c.codes.as_ref().map(|m| m.element.as_str()), Some("category"));
    assert_eq!(c.attributes.len(), 2);
}
