//! Compiling a validated CCDL document into a cohort through the mapping.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;
use verbund_proto::v1 as pb;

use crate::dates::{AgeTest, AgeUnit, age_filter, parse_date};
use crate::mapping::{ConceptSpec, Hierarchy, Mapping, Rule};
use crate::{CcdlError, MAX_CODES, MAX_CRITERIA, MAX_GROUPS};

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "inclusionCriteria")]
    inclusion: Vec<Vec<Criterion>>,
    #[serde(rename = "exclusionCriteria", default)]
    exclusion: Vec<Vec<Criterion>>,
}

#[derive(Deserialize)]
struct TermCode {
    code: String,
    system: String,
}

#[derive(Deserialize)]
struct Unit {
    code: String,
}

#[derive(Deserialize)]
struct Criterion {
    context: TermCode,
    #[serde(rename = "termCodes")]
    term_codes: Vec<TermCode>,
    #[serde(rename = "valueFilter")]
    value_filter: Option<Filter>,
    #[serde(rename = "attributeFilters", default)]
    attribute_filters: Vec<Filter>,
    #[serde(rename = "timeRestriction")]
    time_restriction: Option<TimeRestriction>,
}

#[derive(Deserialize)]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "selectedConcepts", default)]
    selected_concepts: Vec<TermCode>,
    comparator: Option<String>,
    value: Option<f64>,
    #[serde(rename = "minValue")]
    min_value: Option<f64>,
    #[serde(rename = "maxValue")]
    max_value: Option<f64>,
    unit: Option<Unit>,
    #[serde(rename = "attributeCode")]
    attribute_code: Option<TermCode>,
    #[serde(default)]
    criteria: Vec<Criterion>,
}

#[derive(Deserialize)]
struct TimeRestriction {
    #[serde(rename = "afterDate")]
    after: Option<String>,
    #[serde(rename = "beforeDate")]
    before: Option<String>,
}

struct Compiler<'m> {
    mapping: &'m Mapping,
    today: i32,
    errors: Vec<CcdlError>,
    /// Codings and prefixes emitted so far.
    codes: usize,
    codes_exceeded: bool,
}

/// A filter parsed into what the mapping needs.
enum Quantity {
    Compare(pb::CompareOp, f64),
    Range(f64, f64),
}

fn op_of(comparator: &str) -> Option<pb::CompareOp> {
    Some(match comparator {
        "gt" => pb::CompareOp::Gt,
        "ge" => pb::CompareOp::Ge,
        "lt" => pb::CompareOp::Lt,
        "le" => pb::CompareOp::Le,
        "eq" => pb::CompareOp::Eq,
        "ne" => pb::CompareOp::Ne,
        _ => return None,
    })
}

fn coding(system: &str, code: &str) -> pb::Coding {
    pb::Coding { system: system.to_string(), code: code.to_string() }
}

fn string_eq(column: &str, value: &str) -> pb::Filter {
    pb::Filter {
        kind: Some(pb::filter::Kind::Compare(pb::Comparison {
            column: column.to_string(),
            op: pb::CompareOp::Eq as i32,
            value: Some(pb::Literal { value: Some(pb::literal::Value::String(value.to_string())) }),
        })),
    }
}

fn count_criteria(criteria: &[Criterion]) -> usize {
    criteria.iter().map(|c| 1 + c.attribute_filters.iter().map(|a| count_criteria(&a.criteria)).sum::<usize>()).sum()
}

pub fn compile_document(document: &Value, mapping: &Mapping, today: i32) -> Result<pb::Cohort, Vec<CcdlError>> {
    let document: Document = Document::deserialize(document).map_err(|e| {
        vec![CcdlError { pointer: String::new(), message: format!("the document does not have the CCDL shape: {e}") }]
    })?;
    let groups = document.inclusion.len() + document.exclusion.len();
    let criteria: usize = document.inclusion.iter().chain(&document.exclusion).map(|g| count_criteria(g)).sum();
    let mut limits = Vec::new();
    if groups > MAX_GROUPS {
        limits.push(format!("the document has {groups} groups; at most {MAX_GROUPS} are accepted"));
    }
    if criteria > MAX_CRITERIA {
        limits.push(format!("the document has {criteria} criteria; at most {MAX_CRITERIA} are accepted"));
    }
    if !limits.is_empty() {
        return Err(limits.into_iter().map(|message| CcdlError { pointer: String::new(), message }).collect());
    }
    let mut compiler = Compiler { mapping, today, errors: Vec::new(), codes: 0, codes_exceeded: false };
    let mut cohort = pb::Cohort::default();
    for (name, groups, out) in [
        ("inclusionCriteria", &document.inclusion, &mut cohort.inclusion),
        ("exclusionCriteria", &document.exclusion, &mut cohort.exclusion),
    ] {
        for (i, group) in groups.iter().enumerate() {
            let mut compiled = pb::CriterionGroup::default();
            for (j, criterion) in group.iter().enumerate() {
                if let Some(c) = compiler.criterion(criterion, &format!("/{name}/{i}/{j}"), None) {
                    compiled.criteria.push(c);
                }
            }
            out.push(compiled);
        }
    }
    if compiler.codes_exceeded {
        compiler.errors.push(CcdlError {
            pointer: String::new(),
            message: format!("the criteria expand to more than {MAX_CODES} codes and prefixes"),
        });
    }
    if compiler.errors.is_empty() { Ok(cohort) } else { Err(compiler.errors) }
}

impl Compiler<'_> {
    fn error(&mut self, pointer: String, message: String) {
        self.errors.push(CcdlError { pointer, message });
    }

    /// Counts `n` more codes; false once over the limit.
    fn take_codes(&mut self, n: usize) -> bool {
        self.codes += n;
        if self.codes > MAX_CODES {
            self.codes_exceeded = true;
        }
        !self.codes_exceeded
    }

    fn push_coding(
        &mut self,
        out: &mut Vec<pb::Coding>,
        seen: &mut HashSet<(String, String)>,
        system: &str,
        code: &str,
    ) {
        for s in self.mapping.equivalent_systems(system) {
            if seen.insert((s.clone(), code.to_string())) && self.take_codes(1) {
                out.push(coding(&s, code));
            }
        }
    }

    /// Compiles one criterion; `nested` names the dataset a reference attribute requires.
    fn criterion(&mut self, c: &Criterion, ptr: &str, nested: Option<&str>) -> Option<pb::Criterion> {
        let errors_before = self.errors.len();
        let context = c.context.code.as_str();
        if c.context.system != self.mapping.context_system() {
            self.error(
                format!("{ptr}/context/system"),
                format!("context system '{}' is not '{}'", c.context.system, self.mapping.context_system()),
            );
            return None;
        }
        if !self.mapping.knows_context(context) {
            self.error(format!("{ptr}/context/code"), format!("unknown context '{context}' (no mapping names it)"));
            return None;
        }
        // Resolve every term code; all must compile the same way.
        let mut resolved: Vec<(&Rule, &TermCode)> = Vec::new();
        for (k, term) in c.term_codes.iter().enumerate() {
            match self.mapping.resolve(context, &term.system, &term.code) {
                Ok(r) => resolved.push((r.rule, term)),
                Err(message) => self.error(format!("{ptr}/termCodes/{k}"), message),
            }
        }
        let (rule, _) = *resolved.first()?;
        if let Some(k) = resolved.iter().position(|(r, _)| !r.same_target(rule)) {
            self.error(
                format!("{ptr}/termCodes/{k}"),
                "this code maps to another dataset or element than the criterion's first code; put it in a criterion of its own".to_string(),
            );
            return None;
        }
        if let Some(dataset) = nested
            && dataset != rule.dataset
        {
            self.error(
                format!("{ptr}/context"),
                format!(
                    "a referenced criterion must be on dataset '{dataset}', and context '{context}' maps to '{}'",
                    rule.dataset
                ),
            );
            return None;
        }
        let mut out = pb::Criterion { dataset: rule.dataset.clone(), ..Default::default() };
        let mut attributes = Vec::new();
        // Codes.
        if let Some(element) = &rule.code_element {
            let mut codes = pb::CodeMatch { element: element.clone(), ..Default::default() };
            let (mut seen_c, mut seen_p) = (HashSet::new(), HashSet::new());
            for (r, term) in &resolved {
                match r.hierarchy {
                    Hierarchy::Prefix => self.push_coding(&mut codes.prefixes, &mut seen_p, &term.system, &term.code),
                    Hierarchy::None => self.push_coding(&mut codes.codings, &mut seen_c, &term.system, &term.code),
                    Hierarchy::Tree => {
                        let room = MAX_CODES.saturating_sub(self.codes) + 1;
                        let (expanded, cut) = self.mapping.expand_tree(context, &term.system, &term.code, room);
                        if cut {
                            self.codes_exceeded = true;
                        }
                        for code in expanded {
                            // Expanded codes another rule maps differently (or none) are dropped.
                            let same = code == term.code
                                || self
                                    .mapping
                                    .resolve(context, &term.system, &code)
                                    .is_ok_and(|x| x.rule.same_target(r));
                            if same {
                                self.push_coding(&mut codes.codings, &mut seen_c, &term.system, &code);
                            }
                        }
                    }
                }
            }
            out.codes = Some(codes);
        } else if let Some(primary) = &rule.primary_code
            && self.take_codes(1)
        {
            out.codes = Some(pb::CodeMatch {
                element: primary.element.clone(),
                codings: vec![coding(&primary.system, &primary.code)],
                prefixes: Vec::new(),
            });
        }
        // Concepts that always apply, for the rule and for the code.
        let per_code = resolved.iter().flat_map(|(r, t)| r.per_code.get(&t.code)).flat_map(|p| p.required.iter());
        for required in rule.required.iter().chain(per_code) {
            let mut m = pb::CodeMatch { element: required.element.clone(), ..Default::default() };
            let mut seen = HashSet::new();
            for c in &required.codings {
                self.push_coding(&mut m.codings, &mut seen, &c.system, &c.code);
            }
            attributes.push(pb::AttributeFilter { kind: Some(pb::attribute_filter::Kind::Concept(m)) });
        }
        if resolved.len() > 1 && resolved.iter().any(|(r, t)| r.per_code.contains_key(&t.code)) {
            self.error(
                format!("{ptr}/termCodes"),
                "codes with their own required concepts cannot be combined in one criterion".to_string(),
            );
        }
        let mut fixed: Vec<pb::Filter> = rule.fixed.iter().map(|f| string_eq(&f.column, &f.equals)).collect();
        // Value filter.
        if let Some(v) = &c.value_filter {
            let vptr = format!("{ptr}/valueFilter");
            if v.kind == "concept" {
                match &rule.value.concept {
                    Some(spec) => {
                        if let Some(m) = self.concepts(spec, &v.selected_concepts, &vptr) {
                            out.value = Some(pb::ValueFilter { kind: Some(pb::value_filter::Kind::Concept(m)) });
                        }
                    }
                    None => self.error(vptr, format!("context '{context}' has no coded value to filter on")),
                }
            } else if let Some(q) = self.quantity(v, &vptr) {
                if let Some(age) = &rule.value.age {
                    let unit = v.unit.as_ref().map(|u| u.code.as_str());
                    match unit.and_then(AgeUnit::from_code) {
                        None => self.error(
                            format!("{vptr}/unit"),
                            format!("an age needs a unit of a, mo, wk or d (year, month, week, day), not {unit:?}"),
                        ),
                        Some(unit) => {
                            let test = match q {
                                Quantity::Compare(op, x) => AgeTest::Compare(op, x),
                                Quantity::Range(a, b) => AgeTest::Range(a, b),
                            };
                            match age_filter(&age.column, test, unit, self.today) {
                                Ok(f) => fixed.push(f),
                                Err(message) => self.error(vptr, message),
                            }
                        }
                    }
                } else if let Some(spec) = &rule.value.quantity {
                    let unit = v.unit.as_ref().map(|u| u.code.clone()).unwrap_or_default();
                    let kind = match q {
                        Quantity::Compare(op, value) => pb::value_filter::Kind::Compare(pb::QuantityCompare {
                            column: spec.column.clone(),
                            unit_column: spec.unit_column.clone(),
                            op: op as i32,
                            value,
                            unit,
                        }),
                        Quantity::Range(min, max) => pb::value_filter::Kind::Range(pb::QuantityRange {
                            column: spec.column.clone(),
                            unit_column: spec.unit_column.clone(),
                            min,
                            max,
                            unit,
                        }),
                    };
                    out.value = Some(pb::ValueFilter { kind: Some(kind) });
                } else {
                    self.error(vptr, format!("context '{context}' has no quantity to filter on"));
                }
            }
        }
        // Attribute filters.
        for (k, a) in c.attribute_filters.iter().enumerate() {
            let aptr = format!("{ptr}/attributeFilters/{k}");
            let Some(code) = &a.attribute_code else {
                self.error(aptr, "attributeCode is missing".to_string());
                continue;
            };
            let spec = rule.attributes.iter().find(|s| {
                s.code == code.code && s.systems.as_ref().is_none_or(|systems| systems.contains(&code.system))
            });
            let Some(spec) = spec else {
                self.error(
                    format!("{aptr}/attributeCode"),
                    format!(
                        "no mapping for attribute '{}' (system '{}') of context '{context}'",
                        code.code, code.system
                    ),
                );
                continue;
            };
            let kind = match (a.kind.as_str(), &spec.concept, &spec.quantity, &spec.reference) {
                ("concept", Some(concept), _, _) => {
                    self.concepts(concept, &a.selected_concepts, &aptr).map(pb::attribute_filter::Kind::Concept)
                }
                ("quantity-comparator" | "quantity-range", _, Some(q), _) => self.quantity(a, &aptr).map(|parsed| {
                    let unit = a.unit.as_ref().map(|u| u.code.clone()).unwrap_or_default();
                    match parsed {
                        Quantity::Compare(op, value) => pb::attribute_filter::Kind::Compare(pb::QuantityCompare {
                            column: q.column.clone(),
                            unit_column: q.unit_column.clone(),
                            op: op as i32,
                            value,
                            unit,
                        }),
                        Quantity::Range(min, max) => pb::attribute_filter::Kind::Range(pb::QuantityRange {
                            column: q.column.clone(),
                            unit_column: q.unit_column.clone(),
                            min,
                            max,
                            unit,
                        }),
                    }
                }),
                ("reference", _, _, Some(reference)) if nested.is_none() => {
                    let mut linked = pb::LinkedCriteria { via: reference.via.clone(), criteria: Vec::new() };
                    for (m, inner) in a.criteria.iter().enumerate() {
                        if let Some(x) =
                            self.criterion(inner, &format!("{aptr}/criteria/{m}"), Some(&reference.dataset))
                        {
                            linked.criteria.push(x);
                        }
                    }
                    Some(pb::attribute_filter::Kind::Linked(linked))
                }
                ("reference", _, _, Some(_)) => {
                    self.error(aptr, "a referenced criterion cannot have a reference of its own".to_string());
                    None
                }
                (kind, _, _, _) => {
                    self.error(
                        format!("{aptr}/type"),
                        format!("attribute '{}' of context '{context}' cannot be filtered by {kind}", code.code),
                    );
                    None
                }
            };
            if let Some(kind) = kind {
                attributes.push(pb::AttributeFilter { kind: Some(kind) });
            }
        }
        out.attributes = attributes;
        // Time restriction.
        if let Some(t) = &c.time_restriction {
            let tptr = format!("{ptr}/timeRestriction");
            let mut day = |field: &str, text: &Option<String>| -> Option<Option<i32>> {
                match text {
                    None => Some(None),
                    Some(s) => match parse_date(s) {
                        Some(d) => Some(Some(d)),
                        None => {
                            self.error(format!("{tptr}/{field}"), format!("'{s}' is not a date (YYYY-MM-DD)"));
                            None
                        }
                    },
                }
            };
            let after = day("afterDate", &t.after);
            let before = day("beforeDate", &t.before);
            if let (Some(after), Some(before)) = (after, before) {
                match &rule.time {
                    _ if after.zip(before).is_some_and(|(a, b)| a > b) => self.error(
                        format!("{tptr}/afterDate"),
                        format!(
                            "afterDate {} is later than beforeDate {}",
                            t.after.as_deref().unwrap_or(""),
                            t.before.as_deref().unwrap_or("")
                        ),
                    ),
                    None => self.error(tptr, format!("context '{context}' has no time to restrict")),
                    Some(spec) => {
                        out.time = Some(pb::TimeRange {
                            start_column: spec.start.clone(),
                            end_column: spec.end.clone(),
                            after,
                            before,
                        })
                    }
                }
            }
        }
        out.fixed = match fixed.len() {
            0 => None,
            1 => fixed.pop(),
            _ => Some(pb::Filter { kind: Some(pb::filter::Kind::And(pb::Conjunction { operands: fixed })) }),
        };
        (self.errors.len() == errors_before).then_some(out)
    }

    /// Parses a quantity filter (comparator or range), checking min <= max.
    fn quantity(&mut self, f: &Filter, ptr: &str) -> Option<Quantity> {
        match f.kind.as_str() {
            "quantity-comparator" => {
                let op = f.comparator.as_deref().and_then(op_of);
                match (op, f.value) {
                    (Some(op), Some(value)) => Some(Quantity::Compare(op, value)),
                    _ => {
                        self.error(ptr.to_string(), "a quantity-comparator needs comparator and value".to_string());
                        None
                    }
                }
            }
            "quantity-range" => match (f.min_value, f.max_value) {
                (Some(min), Some(max)) if min <= max => Some(Quantity::Range(min, max)),
                (Some(min), Some(max)) => {
                    self.error(format!("{ptr}/minValue"), format!("minValue {min} is greater than maxValue {max}"));
                    None
                }
                _ => {
                    self.error(ptr.to_string(), "a quantity-range needs minValue and maxValue".to_string());
                    None
                }
            },
            other => {
                self.error(format!("{ptr}/type"), format!("'{other}' is not a quantity filter"));
                None
            }
        }
    }

    /// Selected concepts as a match on the spec's element.
    fn concepts(&mut self, spec: &ConceptSpec, selected: &[TermCode], ptr: &str) -> Option<pb::CodeMatch> {
        let mut m = pb::CodeMatch { element: spec.element.clone(), ..Default::default() };
        let mut seen = HashSet::new();
        let mut ok = true;
        for (k, concept) in selected.iter().enumerate() {
            let translated =
                spec.translate.iter().find(|t| t.from.system == concept.system && t.from.code == concept.code);
            if let Some(t) = translated {
                self.push_coding(&mut m.codings, &mut seen, &t.to.system, &t.to.code);
            } else if spec.systems.as_ref().is_none_or(|s| s.contains(&concept.system)) {
                self.push_coding(&mut m.codings, &mut seen, &concept.system, &concept.code);
            } else {
                ok = false;
                self.error(
                    format!("{ptr}/selectedConcepts/{k}"),
                    format!(
                        "no mapping for concept '{}' of system '{}' on element '{}'",
                        concept.code, concept.system, spec.element
                    ),
                );
            }
        }
        ok.then_some(m)
    }
}
