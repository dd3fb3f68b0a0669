//! From the generated tables to resources: which resources a patient has (encounters derived
//! from visit days and acute diagnoses, consents, specimens), emitted patient by patient.

use super::resources::*;
use super::*;

pub(super) struct Tables<'a> {
    pub(super) patients: PatientCols<'a>,
    pub(super) conditions: ConditionCols<'a>,
    pub(super) observations: ObservationCols<'a>,
}

pub(super) struct PatientCols<'a> {
    pub(super) id: &'a StringArray,
    pub(super) sex: &'a StringArray,
    pub(super) birth: &'a Date32Array,
    pub(super) region: &'a StringArray,
    pub(super) deceased: &'a BooleanArray,
}

pub(super) struct ConditionCols<'a> {
    pub(super) patient: &'a StringArray,
    pub(super) icd10: &'a StringArray,
    pub(super) snomed: &'a StringArray,
    pub(super) description: &'a StringArray,
    pub(super) onset: &'a Date32Array,
}

pub(super) struct ObservationCols<'a> {
    pub(super) patient: &'a StringArray,
    pub(super) loinc: &'a StringArray,
    pub(super) value: &'a Float64Array,
    pub(super) unit: &'a StringArray,
    pub(super) effective: &'a Date32Array,
}

pub(super) fn table<'a>(site: &'a SiteData, name: &str) -> Result<&'a RecordBatch> {
    site.tables
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .ok_or_else(|| malformed(site, format!("no table {name}")))
}

pub(super) fn column<'a, A: Array + 'static>(site: &SiteData, batch: &'a RecordBatch, name: &str) -> Result<&'a A> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| malformed(site, format!("no column {name} of the expected type")))
}

pub(super) fn malformed(site: &SiteData, what: String) -> Error {
    Error::Encode { path: PathBuf::from(&site.site), error: what.into() }
}

impl<'a> Tables<'a> {
    pub(super) fn of(site: &'a SiteData) -> Result<Tables<'a>> {
        let p = table(site, "patients")?;
        let c = table(site, "conditions")?;
        let o = table(site, "observations")?;
        Ok(Tables {
            patients: PatientCols {
                id: column(site, p, "patient_id")?,
                sex: column(site, p, "sex")?,
                birth: column(site, p, "birth_date")?,
                region: column(site, p, "region")?,
                deceased: column(site, p, "deceased")?,
            },
            conditions: ConditionCols {
                patient: column(site, c, "patient_id")?,
                icd10: column(site, c, "icd10")?,
                snomed: column(site, c, "snomed")?,
                description: column(site, c, "description")?,
                onset: column(site, c, "onset_date")?,
            },
            observations: ObservationCols {
                patient: column(site, o, "patient_id")?,
                loinc: column(site, o, "loinc")?,
                value: column(site, o, "value")?,
                unit: column(site, o, "unit")?,
                effective: column(site, o, "effective_date")?,
            },
        })
    }
}

/// Where resources go. `begin_patient` announces how many resources the next patient has, so
/// a Bundle writer can keep them together.
pub(super) trait Sink {
    fn begin_patient(&mut self, resources: usize) -> Result<()>;
    /// A reference to a resource of the current patient.
    fn reference(&self, resource_type: &str, id: &str) -> Reference;
    fn put<R: Serialize>(&mut self, resource_type: &'static str, id: &str, resource: &R) -> Result<()>;
}

/// One encounter of a patient: `Some(day)` ambulatory visits, `None` for inpatient stays.
pub(super) struct Plan {
    /// Distinct observation days, in order of first appearance: one AMB encounter each.
    pub(super) visit_days: Vec<i32>,
    /// Condition rows (absolute) with an inpatient stay, and the stay's rule.
    pub(super) stays: Vec<(usize, &'static str, i32)>,
    /// Condition row the specimen is linked to.
    pub(super) specimen: Option<usize>,
    pub(super) consent: bool,
    pub(super) objection: bool,
}

pub(super) fn emit_site<S: Sink>(t: &Tables<'_>, sink: &mut S) -> Result<()> {
    let (mut c_row, mut o_row) = (0usize, 0usize);
    let (nc, no) = (t.conditions.patient.len(), t.observations.patient.len());
    let mut plan = Plan { visit_days: Vec::new(), stays: Vec::new(), specimen: None, consent: false, objection: false };
    let mut id = String::with_capacity(64);
    for p in 0..t.patients.id.len() {
        let pid = t.patients.id.value(p);
        let birth = t.patients.birth.value(p);
        let dice = Dice::new(pid, birth);
        let c_end = c_row + (c_row..nc).take_while(|&r| t.conditions.patient.value(r) == pid).count();
        let o_end = o_row + (o_row..no).take_while(|&r| t.observations.patient.value(r) == pid).count();

        plan.visit_days.clear();
        for r in o_row..o_end {
            let day = t.observations.effective.value(r);
            if !plan.visit_days.contains(&day) {
                plan.visit_days.push(day);
            }
        }
        plan.stays.clear();
        plan.specimen = None;
        for r in c_row..c_end {
            let icd = t.conditions.icd10.value(r);
            if let Some(&(_, department, days)) = INPATIENT_DIAGNOSES.iter().find(|(code, _, _)| *code == icd) {
                plan.stays.push((r, department, days));
            }
            if icd == SPECIMEN_DIAGNOSIS && plan.specimen.is_none() && dice.roll(3, 1000) < SPECIMEN_PER_MILLE {
                plan.specimen = Some(r);
            }
        }
        plan.consent = dice.roll(1, 1000) < BROAD_CONSENT_PER_MILLE;
        plan.objection = dice.roll(2, 1000) < OBJECTION_PER_MILLE;
        let count = 1
            + plan.visit_days.len()
            + plan.stays.len()
            + (c_end - c_row)
            + (o_end - o_row)
            + usize::from(plan.specimen.is_some())
            + usize::from(plan.consent)
            + usize::from(plan.objection);
        sink.begin_patient(count)?;

        emit_patient(t, p, &dice, sink)?;
        let subject = |sink: &S| sink.reference("Patient", pid);

        // Encounters: AMB visits, then IMP stays.
        for (k, &day) in plan.visit_days.iter().enumerate() {
            set_id(&mut id, pid, "enc", k + 1);
            let department = if day - birth < 18 * 365 { "1000" } else { "0100" };
            let service = [coding(FACHABTEILUNG, department, None)];
            let res = EncounterRes {
                resource_type: "Encounter",
                id: &id,
                status: "finished",
                class: coding(ACT_CODE, "AMB", Some("ambulatory")),
                kind: &[Concept { coding: &EINRICHTUNGSKONTAKT }],
                service_type: Concept { coding: &service },
                subject: subject(sink),
                period: Period { start: Day(day), end: Some(Day(day)) },
                diagnosis: Vec::new(),
            };
            sink.put("Encounter", &id, &res)?;
        }
        let first_stay = plan.visit_days.len() + 1;
        for (k, &(r, department, days)) in plan.stays.iter().enumerate() {
            set_id(&mut id, pid, "enc", first_stay + k);
            let onset = t.conditions.onset.value(r);
            let service = [coding(FACHABTEILUNG, department, None)];
            let mut cond_id = String::new();
            set_id(&mut cond_id, pid, "cond", r - c_row + 1);
            let res = EncounterRes {
                resource_type: "Encounter",
                id: &id,
                status: "finished",
                class: coding(ACT_CODE, "IMP", Some("inpatient encounter")),
                kind: &[Concept { coding: &EINRICHTUNGSKONTAKT }, Concept { coding: &NORMALSTATIONAER }],
                service_type: Concept { coding: &service },
                subject: subject(sink),
                period: Period { start: Day(onset), end: Some(Day((onset + days).min(REFERENCE_DAY))) },
                diagnosis: vec![Diagnosis { condition: sink.reference("Condition", &cond_id), rank: 1 }],
            };
            sink.put("Encounter", &id, &res)?;
        }

        // Conditions.
        let mut enc_id = String::new();
        for r in c_row..c_end {
            set_id(&mut id, pid, "cond", r - c_row + 1);
            let onset = Day(t.conditions.onset.value(r));
            let codes = [
                coding(ICD10GM, t.conditions.icd10.value(r), None),
                coding(SNOMED, t.conditions.snomed.value(r), Some(t.conditions.description.value(r))),
            ];
            let encounter = plan.stays.iter().position(|(s, _, _)| *s == r).map(|k| {
                set_id(&mut enc_id, pid, "enc", first_stay + k);
                sink.reference("Encounter", &enc_id)
            });
            let res = ConditionRes {
                resource_type: "Condition",
                id: &id,
                clinical_status: Concept { coding: &ACTIVE },
                verification_status: Concept { coding: &CONFIRMED },
                code: Concept { coding: &codes },
                subject: subject(sink),
                encounter,
                onset_date_time: onset,
                recorded_date: onset,
            };
            sink.put("Condition", &id, &res)?;
        }

        // Observations.
        for r in o_row..o_end {
            set_id(&mut id, pid, "obs", r - o_row + 1);
            let loinc = t.observations.loinc.value(r);
            let unit = t.observations.unit.value(r);
            let day = t.observations.effective.value(r);
            let code = [coding(LOINC, loinc, None)];
            let encounter = plan.visit_days.iter().position(|d| *d == day).map(|k| {
                set_id(&mut enc_id, pid, "enc", k + 1);
                sink.reference("Encounter", &enc_id)
            });
            let res = ObservationRes {
                resource_type: "Observation",
                id: &id,
                status: "final",
                category: [Concept { coding: if is_vital_sign(loinc) { &VITAL_SIGNS } else { &LABORATORY } }],
                code: Concept { coding: &code },
                subject: subject(sink),
                encounter,
                effective_date_time: Day(day),
                value_quantity: Quantity {
                    value: t.observations.value.value(r),
                    unit: unit_display(unit),
                    system: UCUM,
                    code: unit,
                },
            };
            sink.put("Observation", &id, &res)?;
        }

        // Specimen.
        if let Some(r) = plan.specimen {
            set_id(&mut id, pid, "spec", 1);
            let mut cond_id = String::new();
            set_id(&mut cond_id, pid, "cond", r - c_row + 1);
            let onset = t.conditions.onset.value(r);
            let res = SpecimenRes {
                resource_type: "Specimen",
                id: &id,
                extension: [Extension {
                    url: DIAGNOSE_EXTENSION,
                    value_coding: None,
                    value_reference: Some(sink.reference("Condition", &cond_id)),
                }],
                status: "available",
                kind: Concept { coding: &SERUM },
                subject: subject(sink),
                collection: Collection { collected: dice.day_between(8, onset, REFERENCE_DAY) },
            };
            sink.put("Specimen", &id, &res)?;
        }

        // Consents.
        let earliest = birth.max(Day::from_civil(2019, 1, 1).0).min(REFERENCE_DAY - 1);
        if plan.consent {
            set_id(&mut id, pid, "consent", 1);
            let date = dice.day_between(4, earliest, REFERENCE_DAY);
            let until = date.plus_years(5);
            let codes: Vec<[Coding; 1]> = BROAD_CONSENT_CODES
                .iter()
                .map(|(code, display)| [coding(CONSENT_POLICY, code, Some(display))])
                .collect();
            let concepts: Vec<[Concept; 1]> = codes.iter().map(|c| [Concept { coding: c }]).collect();
            let res = ConsentRes {
                resource_type: "Consent",
                id: &id,
                status: "active",
                scope: Concept { coding: &RESEARCH_SCOPE },
                category: [Concept { coding: &BROAD_CONSENT_CATEGORY }],
                patient: subject(sink),
                date_time: date,
                policy: &BROAD_CONSENT_POLICY,
                provision: Provision {
                    kind: Some("deny"),
                    period: Period { start: date, end: Some(until) },
                    code: &[],
                    purpose: &[],
                    provision: concepts
                        .iter()
                        .map(|c| Provision {
                            kind: Some("permit"),
                            period: Period { start: date, end: Some(until) },
                            code: c,
                            purpose: &[],
                            provision: Vec::new(),
                        })
                        .collect(),
                },
            };
            sink.put("Consent", &id, &res)?;
        }
        if plan.objection {
            set_id(&mut id, pid, "objection", 1);
            let date = dice.day_between(5, earliest, REFERENCE_DAY);
            let res = ConsentRes {
                resource_type: "Consent",
                id: &id,
                status: "active",
                scope: Concept { coding: &RESEARCH_SCOPE },
                category: [Concept { coding: &OBJECTION_CATEGORY }],
                patient: subject(sink),
                date_time: date,
                policy: &[],
                provision: Provision {
                    kind: None,
                    period: Period { start: date, end: None },
                    code: &[],
                    purpose: &[],
                    provision: vec![Provision {
                        kind: Some("deny"),
                        period: Period { start: date, end: None },
                        code: &[],
                        purpose: &COMMERCIAL,
                        provision: Vec::new(),
                    }],
                },
            };
            sink.put("Consent", &id, &res)?;
        }

        c_row = c_end;
        o_row = o_end;
    }
    if c_row != nc || o_row != no {
        return Err(Error::Encode {
            path: PathBuf::new(),
            error: "conditions or observations are not grouped by patient in patient order".into(),
        });
    }
    Ok(())
}

pub(super) fn emit_patient<S: Sink>(t: &Tables<'_>, p: usize, dice: &Dice, sink: &mut S) -> Result<()> {
    let pid = t.patients.id.value(p);
    let sex = t.patients.sex.value(p);
    let (gender, gender_ext) = match sex {
        "female" | "male" => (sex, None),
        _ => (
            "other",
            Some(Extensions {
                extension: [Extension {
                    url: "http://fhir.de/StructureDefinition/gender-amtlich-de",
                    value_coding: Some(coding("http://fhir.de/CodeSystem/gender-amtlich-de", "D", Some("divers"))),
                    value_reference: None,
                }],
            }),
        ),
    };
    let postal = t.patients.region.is_valid(p).then(|| postal_prefixes(t.patients.region.value(p))).flatten().map(
        |(prefixes, state)| {
            let prefix = prefixes[dice.roll(6, prefixes.len() as u64) as usize];
            (format!("{prefix}{:03}", dice.roll(7, 1000)), state)
        },
    );
    let address: Vec<Address> =
        postal.iter().map(|(code, state)| Address { kind: "both", postal_code: code, state, country: "DE" }).collect();
    let res = PatientRes {
        resource_type: "Patient",
        id: pid,
        gender,
        gender_ext,
        birth_date: Day(t.patients.birth.value(p)),
        deceased_boolean: t.patients.deceased.is_valid(p) && t.patients.deceased.value(p),
        address: &address,
    };
    sink.put("Patient", pid, &res)
}

pub(super) fn set_id(buf: &mut String, pid: &str, kind: &str, n: usize) {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{pid}-{kind}-{n}");
}
