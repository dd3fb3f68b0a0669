//! One parsed resource → its rows in the staged datasets. Everything that can make a resource
//! bad (dates, references, the patient) is checked before the first row is written, so a
//! skipped resource leaves no rows behind.

use std::collections::HashMap;
use std::path::Path;

use crate::ImportError;
use crate::dates::{interval, period};
use crate::model::{AnyResource, CodeableConcept, ContainedMedication, Period, Provision};
use crate::table::{COLUMNS, Ds, STAGING_EXTRA, TOMBSTONE_COLUMNS, Table};

pub const DIAGNOSE_EXTENSION: &str =
    "https://www.medizininformatik-initiative.de/fhir/ext/modul-biobank/StructureDefinition/Diagnose";
const GENDER_SYSTEM: &str = "http://hl7.org/fhir/administrative-gender";
const POLICY_SYSTEM: &str = "urn:ietf:rfc:3986";
const LOINC: &str = "http://loinc.org";
const RESEARCH_CONSENT: &str = "57016-8";

/// Why a resource was skipped (an issue), or a fatal write error.
#[derive(Debug)]
pub enum Fail {
    Issue(String),
    Fatal(ImportError),
}

impl From<ImportError> for Fail {
    fn from(e: ImportError) -> Self {
        Fail::Fatal(e)
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Issue(e)
    }
}

pub enum Outcome {
    Imported,
    NotImported,
}

/// The resource types that become rows (Medication goes to the reference table).
pub fn is_imported_type(t: &str) -> bool {
    matches!(
        t,
        "Patient"
            | "Condition"
            | "Observation"
            | "Encounter"
            | "Procedure"
            | "MedicationAdministration"
            | "MedicationRequest"
            | "MedicationStatement"
            | "Specimen"
            | "Consent"
            | "Medication"
    )
}

/// A staged Medication: its codings, or `None` for a DELETE.
pub struct MedStage {
    pub ver: i64,
    pub resource: String,
    pub codes: Option<Vec<(Option<String>, Option<String>)>>,
}

/// The staging side of one run: one table per dataset, the tombstones, the Medications.
pub struct Staged {
    pub tables: Vec<Table>,
    pub tombstones: Table,
    pub meds: Vec<MedStage>,
    ver: i64,
}

impl Staged {
    pub fn new(dir: &Path) -> Self {
        let tables = crate::table::DATASETS
            .iter()
            .zip(COLUMNS.iter())
            .map(|(name, cols)| {
                let all: Vec<_> = cols.iter().chain(STAGING_EXTRA.iter()).copied().collect();
                Table::new(&all, dir.join(format!("{name}.parquet")))
            })
            .collect();
        Self {
            tables,
            tombstones: Table::new(TOMBSTONE_COLUMNS, dir.join("_tombstones.parquet")),
            meds: Vec::new(),
            ver: 0,
        }
    }

    fn next_ver(&mut self) -> i64 {
        self.ver += 1;
        self.ver
    }

    fn table(&mut self, ds: Ds) -> &mut Table {
        // Staged::new makes one table per dataset, so the index exists.
        &mut self.tables[ds as usize]
    }

    /// A `DELETE` of `Type/id`.
    pub fn tombstone(&mut self, resource: &str) -> Result<(), ImportError> {
        let ver = self.next_ver();
        if resource.starts_with("Medication/") {
            self.meds.push(MedStage { ver, resource: resource.to_string(), codes: None });
        }
        self.tombstones.row().s(Some(resource)).i(ver).end()
    }

    fn coding_rows(
        &mut self,
        resource: &str,
        patient: &str,
        element: &str,
        cc: &CodeableConcept,
        base: &str,
        ver: i64,
    ) -> Result<(), ImportError> {
        for c in &cc.coding {
            self.table(Ds::Codings)
                .row()
                .s(Some(resource))
                .s(Some(patient))
                .s(Some(element))
                .s(c.system.as_deref())
                .s(c.code.as_deref())
                .s(Some(base))
                .i(ver)
                .end()?;
        }
        Ok(())
    }
}

/// Resolves references to `Type/id`: `urn:` fullUrls of the same Bundle, `Type/id`, absolute
/// URLs (last two segments, `_history` dropped). Contained `#id` references are returned as is.
pub struct Refs<'a> {
    pub urns: Option<&'a HashMap<String, String>>,
}

impl Refs<'_> {
    pub fn resolve(&self, reference: &str) -> Result<String, String> {
        if reference.starts_with('#') {
            return Ok(reference.to_string());
        }
        if reference.starts_with("urn:") {
            return self
                .urns
                .and_then(|m| m.get(reference))
                .cloned()
                .ok_or_else(|| format!("unresolvable reference {reference:?} (no such fullUrl in the Bundle)"));
        }
        let path = reference.split(['?', '#']).next().unwrap_or_default();
        let path = match path.find("/_history/") {
            Some(i) => &path[..i],
            None => path,
        };
        let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
        match (segments.next(), segments.next()) {
            (Some(id), Some(t)) if t.starts_with(|c: char| c.is_ascii_uppercase()) => Ok(format!("{t}/{id}")),
            _ => Err(format!("invalid reference {reference:?}")),
        }
    }

    fn optional(&self, r: Option<&crate::model::Reference>) -> Result<Option<String>, String> {
        match r.and_then(|r| r.reference.as_deref()) {
            Some(s) => self.resolve(s).map(Some),
            None => Ok(None),
        }
    }

    /// The bare Patient id of `subject` (or Consent's `patient`).
    fn patient(&self, r: &AnyResource) -> Result<String, String> {
        let reference = r
            .subject
            .as_ref()
            .or(r.patient.as_ref())
            .and_then(|s| s.reference.as_deref())
            .ok_or_else(|| "no patient reference (subject/patient)".to_string())?;
        let resolved = self.resolve(reference)?;
        match resolved.strip_prefix("Patient/") {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(format!("subject {reference:?} is not a Patient")),
        }
    }
}

fn period_of(p: Option<&Period>) -> Result<(Option<i32>, Option<i32>), String> {
    match p {
        Some(p) => period(p.start.as_deref(), p.end.as_deref()),
        None => Ok((None, None)),
    }
}

/// dateTime or Period, whichever is present (dateTime first).
fn time_of(dt: Option<&str>, p: Option<&Period>) -> Result<(Option<i32>, Option<i32>), String> {
    match dt {
        Some(_) => interval(dt),
        None => period_of(p),
    }
}

/// The first two characters of a postal code when both are digits; never more.
fn postal_region(code: Option<&str>) -> Option<String> {
    let code = code?.trim();
    let region: String = code.chars().take(2).collect();
    (region.len() == 2 && region.bytes().all(|b| b.is_ascii_digit())).then_some(region)
}

/// Writes the rows of one resource (its id already checked) with a fresh version.
pub fn stage(staged: &mut Staged, r: &AnyResource, id: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let t = r.resource_type.as_str();
    let res = format!("{t}/{id}");
    if t == "Medication" {
        let codes = r.code.iter().flat_map(|c| c.coding.iter()).map(|c| (c.system.clone(), c.code.clone())).collect();
        let ver = staged.next_ver();
        staged.meds.push(MedStage { ver, resource: res, codes: Some(codes) });
        return Ok(Outcome::Imported);
    }
    if !is_imported_type(t) {
        return Ok(Outcome::NotImported);
    }
    if t == "Patient" {
        return patient(staged, r, id, &res);
    }
    let pid = refs.patient(r)?;
    let pid = pid.as_str();
    match t {
        "Condition" => condition(staged, r, &res, pid, refs),
        "Observation" => observation(staged, r, &res, pid, refs),
        "Encounter" => encounter(staged, r, &res, pid, refs),
        "Procedure" => procedure(staged, r, &res, pid, refs),
        "MedicationAdministration" | "MedicationRequest" | "MedicationStatement" => {
            medication_use(staged, r, &res, pid, refs)
        }
        "Specimen" => specimen(staged, r, &res, pid, refs),
        "Consent" => consent(staged, r, &res, pid),
        _ => Ok(Outcome::NotImported),
    }
}

fn patient(s: &mut Staged, r: &AnyResource, id: &str, res: &str) -> Result<Outcome, Fail> {
    let (birth, birth_end) = interval(r.birth_date.as_deref())?;
    let (death, _) = interval(r.deceased_date_time.as_deref())?;
    let deceased = match (r.deceased_boolean, &r.deceased_date_time) {
        (Some(b), _) => Some(b),
        (None, Some(_)) => Some(true),
        (None, None) => None,
    };
    let region = postal_region(r.address.first().and_then(|a| a.postal_code.as_deref()));
    let ver = s.next_ver();
    s.table(Ds::Patients)
        .row()
        .s(Some(res))
        .s(Some(id))
        .s(r.gender.as_deref())
        .d(birth)
        .d(birth_end)
        .b(deceased)
        .d(death)
        .s(region.as_deref())
        .s(Some(res))
        .i(ver)
        .end()?;
    if let Some(g) = r.gender.as_deref() {
        s.table(Ds::Codings)
            .row()
            .s(Some(res))
            .s(Some(id))
            .s(Some("gender"))
            .s(Some(GENDER_SYSTEM))
            .s(Some(g))
            .s(Some(res))
            .i(ver)
            .end()?;
    }
    Ok(Outcome::Imported)
}

fn first_code(cc: Option<&CodeableConcept>) -> (Option<&str>, Option<&str>) {
    cc.map(CodeableConcept::first).unwrap_or((None, None))
}

fn condition(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let (onset_start, onset_end) = time_of(r.onset_date_time.as_deref(), r.onset_period.as_ref())?;
    let (recorded, _) = interval(r.recorded_date.as_deref())?;
    let encounter = refs.optional(r.encounter.as_ref())?;
    let (system, code) = first_code(r.code.as_ref());
    let ver = s.next_ver();
    s.table(Ds::Conditions)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(system)
        .s(code)
        .d(onset_start)
        .d(onset_end)
        .d(recorded)
        .s(first_code(r.clinical_status.as_ref()).1)
        .s(first_code(r.verification_status.as_ref()).1)
        .s(encounter.as_deref())
        .s(Some(res))
        .i(ver)
        .end()?;
    if let Some(c) = &r.code {
        s.coding_rows(res, pid, "code", c, res, ver)?;
    }
    for c in &r.category {
        s.coding_rows(res, pid, "category", c, res, ver)?;
    }
    for c in &r.body_site {
        s.coding_rows(res, pid, "bodySite", c, res, ver)?;
    }
    Ok(Outcome::Imported)
}

fn observation(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let (start, end) = match (&r.effective_date_time, &r.effective_instant) {
        (Some(dt), _) | (None, Some(dt)) => interval(Some(dt))?,
        (None, None) => period_of(r.effective_period.as_ref())?,
    };
    let encounter = refs.optional(r.encounter.as_ref())?;
    let ver = s.next_ver();
    let row = |s: &mut Staged,
               resource: &str,
               parent: Option<&str>,
               code: Option<&CodeableConcept>,
               q: Option<&crate::model::Quantity>,
               value_cc: Option<&CodeableConcept>|
     -> Result<(), ImportError> {
        let (system, c) = first_code(code);
        let (vs, vc) = first_code(value_cc);
        s.table(Ds::Observations)
            .row()
            .s(Some(resource))
            .s(Some(pid))
            .s(parent)
            .s(system)
            .s(c)
            .s(r.status.as_deref())
            .f(q.and_then(|q| q.value))
            .s(q.and_then(|q| q.code.as_deref().or(q.unit.as_deref())))
            .s(vs)
            .s(vc)
            .d(start)
            .d(end)
            .s(encounter.as_deref())
            .s(Some(res))
            .i(ver)
            .end()
    };
    row(s, res, None, r.code.as_ref(), r.value_quantity.as_ref(), r.value_codeable_concept.as_ref())?;
    for (i, comp) in r.component.iter().enumerate() {
        let cres = format!("{res}#component{i}");
        row(
            s,
            &cres,
            Some(res),
            comp.code.as_ref(),
            comp.value_quantity.as_ref(),
            comp.value_codeable_concept.as_ref(),
        )?;
    }
    if let Some(c) = &r.code {
        s.coding_rows(res, pid, "code", c, res, ver)?;
    }
    for c in &r.category {
        s.coding_rows(res, pid, "category", c, res, ver)?;
    }
    if let Some(c) = &r.value_codeable_concept {
        s.coding_rows(res, pid, "value", c, res, ver)?;
    }
    for c in &r.interpretation {
        s.coding_rows(res, pid, "interpretation", c, res, ver)?;
    }
    for (i, comp) in r.component.iter().enumerate() {
        let cres = format!("{res}#component{i}");
        if let Some(c) = &comp.code {
            s.coding_rows(&cres, pid, "code", c, res, ver)?;
        }
        if let Some(c) = &comp.value_codeable_concept {
            s.coding_rows(&cres, pid, "value", c, res, ver)?;
        }
        for c in &comp.interpretation {
            s.coding_rows(&cres, pid, "interpretation", c, res, ver)?;
        }
    }
    Ok(Outcome::Imported)
}

fn encounter(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let (start, end) = period_of(r.period.as_ref())?;
    let part_of = refs.optional(r.part_of.first())?;
    let class = r.class.as_ref();
    let ver = s.next_ver();
    s.table(Ds::Encounters)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(class.and_then(|c| c.system.as_deref()))
        .s(class.and_then(|c| c.code.as_deref()))
        .s(r.status.as_deref())
        .d(start)
        .d(end)
        .s(part_of.as_deref())
        .s(Some(res))
        .i(ver)
        .end()?;
    if let Some(c) = class {
        s.table(Ds::Codings)
            .row()
            .s(Some(res))
            .s(Some(pid))
            .s(Some("class"))
            .s(c.system.as_deref())
            .s(c.code.as_deref())
            .s(Some(res))
            .i(ver)
            .end()?;
    }
    for c in &r.kind {
        s.coding_rows(res, pid, "type", c, res, ver)?;
    }
    for c in &r.service_type {
        s.coding_rows(res, pid, "serviceType", c, res, ver)?;
    }
    Ok(Outcome::Imported)
}

fn procedure(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let (start, end) = time_of(r.performed_date_time.as_deref(), r.performed_period.as_ref())?;
    let encounter = refs.optional(r.encounter.as_ref())?;
    let (system, code) = first_code(r.code.as_ref());
    let ver = s.next_ver();
    s.table(Ds::Procedures)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(system)
        .s(code)
        .s(r.status.as_deref())
        .d(start)
        .d(end)
        .s(encounter.as_deref())
        .s(Some(res))
        .i(ver)
        .end()?;
    if let Some(c) = &r.code {
        s.coding_rows(res, pid, "code", c, res, ver)?;
    }
    for c in &r.category {
        s.coding_rows(res, pid, "category", c, res, ver)?;
    }
    Ok(Outcome::Imported)
}

fn medication_use(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let (kind, (start, end)) = match r.resource_type.as_str() {
        "MedicationRequest" => ("request", interval(r.authored_on.as_deref())?),
        "MedicationAdministration" => {
            ("administration", time_of(r.effective_date_time.as_deref(), r.effective_period.as_ref())?)
        }
        _ => ("statement", time_of(r.effective_date_time.as_deref(), r.effective_period.as_ref())?),
    };
    // The medication: a reference to a Medication (codes filled at finalize), a contained one,
    // or an inline CodeableConcept (both: codes now, `medication` NULL).
    let mut medication = None;
    let mut inline: Option<CodeableConcept> = None;
    if let Some(reference) = r.medication_reference.as_ref().and_then(|m| m.reference.as_deref()) {
        let resolved = refs.resolve(reference)?;
        if let Some(local) = resolved.strip_prefix('#') {
            let contained = r.contained.iter().find_map(|raw| {
                serde_json::from_str::<ContainedMedication>(raw.get())
                    .ok()
                    .filter(|m| m.resource_type.as_deref() == Some("Medication") && m.id.as_deref() == Some(local))
            });
            match contained {
                Some(m) => inline = Some(m.code.unwrap_or_default()),
                None => return Err(Fail::Issue(format!("contained Medication {reference:?} not found"))),
            }
        } else if resolved.starts_with("Medication/") {
            medication = Some(resolved);
        } else {
            return Err(Fail::Issue(format!("medicationReference {reference:?} is not a Medication")));
        }
    } else if let Some(cc) = &r.medication_codeable_concept {
        inline = Some(CodeableConcept {
            coding: cc
                .coding
                .iter()
                .map(|c| crate::model::Coding { system: c.system.clone(), code: c.code.clone() })
                .collect(),
        });
    }
    let (ms, mc) = first_code(inline.as_ref());
    let ver = s.next_ver();
    s.table(Ds::MedicationUses)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(Some(kind))
        .s(medication.as_deref())
        .s(ms)
        .s(mc)
        .s(r.status.as_deref())
        .d(start)
        .d(end)
        .s(Some(res))
        .i(ver)
        .end()?;
    if let Some(cc) = &inline {
        s.coding_rows(res, pid, "medication", cc, res, ver)?;
    }
    Ok(Outcome::Imported)
}

fn specimen(s: &mut Staged, r: &AnyResource, res: &str, pid: &str, refs: &Refs) -> Result<Outcome, Fail> {
    let collection = r.collection.as_ref();
    let (start, end) = time_of(
        collection.and_then(|c| c.collected_date_time.as_deref()),
        collection.and_then(|c| c.collected_period.as_ref()),
    )?;
    let diagnosis = r
        .extension
        .iter()
        .find(|e| e.url.as_deref() == Some(DIAGNOSE_EXTENSION))
        .and_then(|e| e.value_reference.as_ref());
    let diagnosis = refs.optional(diagnosis)?;
    let body_site = collection.and_then(|c| c.body_site.as_ref());
    let (ts, tc) = first_code(r.kind.first());
    let (bs, bc) = first_code(body_site);
    let ver = s.next_ver();
    s.table(Ds::Specimens)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(ts)
        .s(tc)
        .s(r.status.as_deref())
        .d(start)
        .d(end)
        .s(bs)
        .s(bc)
        .s(diagnosis.as_deref())
        .s(Some(res))
        .i(ver)
        .end()?;
    for c in &r.kind {
        s.coding_rows(res, pid, "type", c, res, ver)?;
    }
    if let Some(c) = body_site {
        s.coding_rows(res, pid, "bodySite", c, res, ver)?;
    }
    Ok(Outcome::Imported)
}

/// A nested provision, flattened with its resolved period.
struct Flat<'a> {
    provision: &'a Provision,
    start: Option<i32>,
    end: Option<i32>,
}

fn flatten<'a>(p: &'a Provision, inherited: (Option<i32>, Option<i32>), out: &mut Vec<Flat<'a>>) -> Result<(), String> {
    for child in &p.provision {
        let own = period_of(child.period.as_ref())?;
        let (start, end) = if child.period.is_some() { own } else { inherited };
        out.push(Flat { provision: child, start, end });
        flatten(child, (start, end), out)?;
    }
    Ok(())
}

fn consent(s: &mut Staged, r: &AnyResource, res: &str, pid: &str) -> Result<Outcome, Fail> {
    let (date, _) = interval(r.date_time.as_deref())?;
    let top = r.provision.as_ref();
    let (start, end) = period_of(top.and_then(|p| p.period.as_ref()))?;
    let mut nested = Vec::new();
    if let Some(p) = top {
        flatten(p, (start, end), &mut nested)?;
    }
    let research = r.category.iter().any(|c| {
        c.coding.iter().any(|c| c.system.as_deref() == Some(LOINC) && c.code.as_deref() == Some(RESEARCH_CONSENT))
    });
    let status = r.status.as_deref();
    let ver = s.next_ver();
    s.table(Ds::Consents)
        .row()
        .s(Some(res))
        .s(Some(pid))
        .s(status)
        .b(Some(research))
        .d(date)
        .d(start)
        .d(end)
        .s(Some(res))
        .i(ver)
        .end()?;
    for f in &nested {
        let p = f.provision;
        let purpose = p.purpose.first();
        let codes: Vec<(Option<&str>, Option<&str>)> =
            p.code.iter().flat_map(|c| c.coding.iter()).map(|c| (c.system.as_deref(), c.code.as_deref())).collect();
        let codes = if codes.is_empty() { vec![(None, None)] } else { codes };
        for (cs, cc) in codes {
            s.table(Ds::ConsentProvisions)
                .row()
                .s(Some(res))
                .s(Some(pid))
                .s(status)
                .d(date)
                .s(p.kind.as_deref())
                .s(cs)
                .s(cc)
                .s(purpose.and_then(|c| c.system.as_deref()))
                .s(purpose.and_then(|c| c.code.as_deref()))
                .d(f.start)
                .d(f.end)
                .s(Some(res))
                .i(ver)
                .end()?;
        }
        for c in &p.code {
            s.coding_rows(res, pid, "provision.code", c, res, ver)?;
        }
    }
    for c in &r.category {
        s.coding_rows(res, pid, "category", c, res, ver)?;
    }
    if let Some(c) = &r.scope {
        s.coding_rows(res, pid, "scope", c, res, ver)?;
    }
    for p in &r.policy {
        if let Some(uri) = p.uri.as_deref() {
            s.table(Ds::Codings)
                .row()
                .s(Some(res))
                .s(Some(pid))
                .s(Some("policy"))
                .s(Some(POLICY_SYSTEM))
                .s(Some(uri))
                .s(Some(res))
                .i(ver)
                .end()?;
        }
    }
    Ok(Outcome::Imported)
}

/// `Type/id` of a `request.url` of a DELETE (`Patient/1`, or an absolute URL).
pub fn delete_target(url: &str) -> Result<String, String> {
    if url.contains('?') {
        return Err(format!("conditional DELETE {url:?} is not supported"));
    }
    Refs { urns: None }.resolve(url)
}
