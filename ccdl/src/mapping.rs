//! The mapping from CCDL criteria to clinical datasets (docs/ccdl-mapping.md).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The format tag `mapping.json` carries.
pub const MAPPING_FORMAT: &str = "verbund-ccdl-mapping/1";

/// A system and code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodingSpec {
    pub system: String,
    pub code: String,
}

/// How a criterion's code expands to more specific codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hierarchy {
    /// Descendants from `tree.json` (a code in no tree stays as it is).
    #[default]
    Tree,
    /// Every code starting with the criterion's code (ICD-10-GM, OPS, ATC).
    Prefix,
    /// The code only.
    None,
}

/// A fixed code on a coded element that replaces the criterion's own codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElementCoding {
    pub element: String,
    pub system: String,
    pub code: String,
}

/// A coded element that must carry one of `codings` (an AttributeFilter that always applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredConcept {
    pub element: String,
    pub codings: Vec<CodingSpec>,
}

/// One selected concept rewritten to another coding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Translation {
    pub from: CodingSpec,
    pub to: CodingSpec,
}

/// Selected concepts matched on a coded element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptSpec {
    pub element: String,
    /// Systems whose codes are used as they are (absent: every system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systems: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translate: Vec<Translation>,
}

/// A number compared on a column, with its unit in another column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantitySpec {
    pub column: String,
    pub unit_column: String,
}

/// An age, compiled into bounds on a birth-date column relative to `today`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeSpec {
    pub column: String,
}

/// What a `valueFilter` compares.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<ConceptSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<QuantitySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AgeSpec>,
}

/// The row's `via` column references a row of `dataset` matching the nested criteria.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    pub via: String,
    pub dataset: String,
}

/// An attribute a context accepts in `attributeFilters`; exactly one of `concept`,
/// `quantity`, `reference` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    /// `attributeCode.code`.
    pub code: String,
    /// Accepted `attributeCode.system` values (absent: any system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systems: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<ConceptSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<QuantitySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSpec>,
}

/// The interval columns a `timeRestriction` must overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    pub start: String,
    pub end: String,
}

/// `column = value` (string) on the dataset itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedSpec {
    pub column: String,
    pub equals: String,
}

/// Extra conditions for one code of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerCode {
    #[serde(default)]
    pub required: Vec<RequiredConcept>,
}

/// One mapping rule: criteria of `context` coded in one of `systems` (optionally only the
/// listed `codes`) become criteria on `dataset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The context code (`context.code`, system `Mapping::context_system`).
    pub context: String,
    pub systems: Vec<String>,
    /// Only these codes (absent: every code of the systems). A rule with codes wins over one
    /// without for the same context and system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<String>>,
    #[serde(default)]
    pub hierarchy: Hierarchy,
    /// The message for a code of these systems that no rule maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmapped_message: Option<String>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub per_code: HashMap<String, PerCode>,
    pub dataset: String,
    /// The coded element the criterion's (expanded) codes must be on (absent: codes select
    /// the rule only, e.g. Patient's gender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_element: Option<String>,
    /// A fixed code looked for instead of the criterion's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_code: Option<ElementCoding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<RequiredConcept>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixed: Vec<FixedSpec>,
    #[serde(default, skip_serializing_if = "is_default_value")]
    pub value: ValueSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeSpec>,
}

impl Rule {
    /// Whether two rules compile a criterion the same way (the codes of one criterion must).
    pub fn same_target(&self, other: &Rule) -> bool {
        self.dataset == other.dataset
            && self.code_element == other.code_element
            && self.primary_code == other.primary_code
            && self.required == other.required
            && self.fixed == other.fixed
            && self.value == other.value
            && self.attributes == other.attributes
            && self.time == other.time
    }
}

fn is_default_value(v: &ValueSpec) -> bool {
    *v == ValueSpec::default()
}

/// The mapping file's top level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    pub format: String,
    /// `context.system` every criterion must have.
    pub context_system: String,
    /// Groups of systems that spell the same code system; a code is matched in all of them.
    #[serde(default)]
    pub equivalent_systems: Vec<Vec<String>>,
    pub rules: Vec<Rule>,
    /// Free text, e.g. what an ontology import skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One code's children in a hierarchy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeEntry {
    pub key: String,
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(default)]
    pub children: Vec<String>,
}

/// A context as the tree file names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeContext {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One root of `tree.json` (the ontology's `mapping_tree.json` format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeRoot {
    pub context: TreeContext,
    pub system: String,
    pub entries: Vec<TreeEntry>,
}

/// Why a mapping could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping: {0}")]
    Json(#[from] serde_json::Error),
    #[error("mapping: {0}")]
    Invalid(String),
}

/// A loaded mapping: rules by context and system, code hierarchies by context and system.
#[derive(Debug)]
pub struct Mapping {
    file: MappingFile,
    /// (context, system) → indices into `file.rules`.
    by_key: HashMap<(String, String), Vec<usize>>,
    contexts: HashSet<String>,
    /// system → its equivalence group (itself first).
    equivalents: HashMap<String, Vec<String>>,
    /// (context, system) → code → children.
    trees: HashMap<(String, String), HashMap<String, Vec<String>>>,
}

/// How a term code resolved.
pub struct Resolved<'m> {
    pub rule_index: usize,
    pub rule: &'m Rule,
}

static BUILTIN: OnceLock<Mapping> = OnceLock::new();

impl Mapping {
    /// The mapping shipped with this crate (`ccdl/mapping.json`, `ccdl/tree.json`).
    pub fn builtin() -> &'static Mapping {
        BUILTIN.get_or_init(|| {
            Mapping::from_json(include_str!("../mapping.json"), include_str!("../tree.json"))
                .expect("the embedded mapping is valid (checked by the crate's tests)")
        })
    }

    /// Loads a mapping file and a tree file (docs/ccdl-mapping.md).
    pub fn from_json(mapping: &str, trees: &str) -> Result<Mapping, MappingError> {
        let file: MappingFile = serde_json::from_str(mapping)?;
        let roots: Vec<TreeRoot> = serde_json::from_str(trees)?;
        Mapping::new(file, roots)
    }

    fn new(file: MappingFile, roots: Vec<TreeRoot>) -> Result<Mapping, MappingError> {
        let invalid = |s: String| Err(MappingError::Invalid(s));
        if file.format != MAPPING_FORMAT {
            return invalid(format!("format is '{}', expected '{MAPPING_FORMAT}'", file.format));
        }
        let mut equivalents: HashMap<String, Vec<String>> = HashMap::new();
        for group in &file.equivalent_systems {
            for system in group {
                let mut ordered = vec![system.clone()];
                ordered.extend(group.iter().filter(|s| *s != system).cloned());
                if equivalents.insert(system.clone(), ordered).is_some() {
                    return invalid(format!("system '{system}' is in two equivalent_systems groups"));
                }
            }
        }
        let mut by_key: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut contexts = HashSet::new();
        for (i, rule) in file.rules.iter().enumerate() {
            let t = rule;
            let name = format!("rule {i} ({})", rule.context);
            if rule.systems.is_empty() {
                return invalid(format!("{name}: no systems"));
            }
            if t.dataset.is_empty() {
                return invalid(format!("{name}: no dataset"));
            }
            if t.code_element.is_some() && t.primary_code.is_some() {
                return invalid(format!("{name}: code_element and primary_code exclude each other"));
            }
            if t.value.age.is_some() && t.value.quantity.is_some() {
                return invalid(format!("{name}: value.age and value.quantity exclude each other"));
            }
            for a in &t.attributes {
                let kinds = usize::from(a.concept.is_some())
                    + usize::from(a.quantity.is_some())
                    + usize::from(a.reference.is_some());
                if kinds != 1 {
                    return invalid(format!(
                        "{name}: attribute '{}' needs exactly one of concept, quantity, reference",
                        a.code
                    ));
                }
            }
            for code in rule.per_code.keys() {
                if let Some(codes) = &rule.codes
                    && !codes.contains(code)
                {
                    return invalid(format!("{name}: per_code '{code}' is not in codes"));
                }
            }
            contexts.insert(rule.context.clone());
            for system in &rule.systems {
                let same = by_key.entry((rule.context.clone(), system.clone())).or_default();
                // Two catch-all rules, or two rules naming the same code, would be ambiguous.
                for &j in same.iter() {
                    let other = &file.rules[j];
                    let clash = match (&rule.codes, &other.codes) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.iter().any(|c| b.contains(c)),
                        _ => false,
                    };
                    if clash {
                        return invalid(format!(
                            "{name} and rule {j} both map context '{}' system '{system}'",
                            rule.context
                        ));
                    }
                }
                same.push(i);
            }
        }
        let mut trees: HashMap<(String, String), HashMap<String, Vec<String>>> = HashMap::new();
        for root in roots {
            let tree = trees.entry((root.context.code, root.system)).or_default();
            for entry in root.entries {
                tree.entry(entry.key).or_default().extend(entry.children);
            }
        }
        Ok(Mapping { file, by_key, contexts, equivalents, trees })
    }

    /// The mapping file's content.
    pub fn file(&self) -> &MappingFile {
        &self.file
    }

    /// The `context.system` criteria must have.
    pub fn context_system(&self) -> &str {
        &self.file.context_system
    }

    /// Whether any rule names this context.
    pub fn knows_context(&self, context: &str) -> bool {
        self.contexts.contains(context)
    }

    /// The rule for a (context, system, code), or a message why there is none.
    pub fn resolve(&self, context: &str, system: &str, code: &str) -> Result<Resolved<'_>, String> {
        if !self.knows_context(context) {
            return Err(format!("unknown context '{context}' (no mapping names it)"));
        }
        let Some(candidates) = self.by_key.get(&(context.to_string(), system.to_string())) else {
            return Err(format!("no mapping for context '{context}' and code system '{system}'"));
        };
        let listed = candidates
            .iter()
            .find(|&&i| self.file.rules[i].codes.as_ref().is_some_and(|c| c.iter().any(|x| x == code)));
        let any = candidates.iter().find(|&&i| self.file.rules[i].codes.is_none());
        match listed.or(any) {
            Some(&i) => Ok(Resolved { rule_index: i, rule: &self.file.rules[i] }),
            None => {
                let message = candidates.iter().find_map(|&i| self.file.rules[i].unmapped_message.clone());
                Err(match message {
                    Some(m) => format!("{m} (context '{context}', code system '{system}', code '{code}')"),
                    None => format!("no mapping for context '{context}', code system '{system}' and code '{code}'"),
                })
            }
        }
    }

    /// The systems a coding of `system` is matched in (itself first).
    pub fn equivalent_systems(&self, system: &str) -> Vec<String> {
        self.equivalents.get(system).cloned().unwrap_or_else(|| vec![system.to_string()])
    }

    /// `code` and its descendants in the tree of (context, system), breadth first, at most
    /// `limit` codes (the bool says whether the list was cut).
    pub fn expand_tree(&self, context: &str, system: &str, code: &str, limit: usize) -> (Vec<String>, bool) {
        let mut out = vec![code.to_string()];
        let Some(tree) = self.trees.get(&(context.to_string(), system.to_string())) else {
            return (out, false);
        };
        let mut seen: HashSet<String> = HashSet::from([code.to_string()]);
        let mut next = 0;
        while next < out.len() {
            if let Some(children) = tree.get(&out[next]) {
                for child in children {
                    if seen.insert(child.clone()) {
                        if out.len() >= limit {
                            return (out, true);
                        }
                        out.push(child.clone());
                    }
                }
            }
            next += 1;
        }
        (out, false)
    }
}
