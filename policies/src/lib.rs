//! A site's own rules, and the one output checker every released number passes through.
//!
//! Pure: no I/O. The node reads the policy file and hands its text to [`Policy::from_toml`].

mod access;
pub mod model;
mod model_facts;
pub mod model_private;
pub mod noise;
mod output;
pub mod private;
mod profile;

pub use access::{Access, AccessDenied, ProjectRule};
pub use model::{ModelRefusal, RegressionSettings, release_model};
pub use model_private::{ModelPlan, ModelShape, release_private_model};
pub use output::{CandidateAggregate, CandidateGroup, empty_result, release, release_group};
pub use private::{PrivacyRefusal, PrivatePlan};
pub use profile::{BudgetSettings, DatasetRule, DpSettings, Level, Profile};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("policy is not valid: {0}")]
    Invalid(String),
    #[error("policy cannot be written: {0}")]
    Write(#[from] toml::ser::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const DEFAULT_MIN_CELL_SIZE: u32 = 5;
pub const DEFAULT_MAX_GROUPS: u32 = 10_000;
pub const DEFAULT_MAX_CONCURRENT_QUERIES: u32 = 8;
pub const DEFAULT_MAX_QUEUED_QUERIES: u32 = 64;
pub const DEFAULT_MAX_QUERY_MEMORY_MB: u32 = 512;
pub const DEFAULT_MAX_CELLS: u64 = 10_000_000;
pub const DEFAULT_MAX_LEVELS: u32 = 200;

/// The rules a site's own staff set. Every field has a safe default, so an empty file is
/// a valid (strict enough) policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// How released numbers are protected: "dp" (differential privacy with a budget, the
    /// default), "feasibility", "k-only" or "test-only-raw".
    pub profile: Profile,
    /// The test-only-raw profile releases raw numbers; it is accepted only with this set.
    pub i_understand_this_releases_raw_numbers: bool,
    /// Minimum number of distinct patients behind every released number: a group, a
    /// histogram bin, and each value over the rows where its column is set. A cell with
    /// 0..k-1 such patients is withheld (an empty cell looks the same as a small one).
    /// A row without a patient key counts as a patient of its own.
    pub min_cell_size: u32,
    /// Upper bound on the number of groups in one answer; more is refused.
    pub max_groups: u32,
    /// Queries this node runs at once; more wait in line.
    pub max_concurrent_queries: u32,
    /// Queries that may wait for a free slot (first come, first served, each until its
    /// deadline); more are refused as overloaded.
    pub max_queued_queries: u32,
    /// Memory one query may use for execution (DataFusion's hash tables, sorts); a query
    /// that needs more is refused as too large, and other queries are unaffected.
    pub max_query_memory_mb: u32,
    /// Upper bound on the numbers one query may compute before it runs: possible groups ×
    /// (aggregates + histogram bins), where the possible groups are the product of the bin
    /// counts of binned groupings, capped by `max_groups`.
    pub max_cells: u64,
    /// Upper bound on the levels of one grouping: the bins of a binned grouping, or the
    /// declared levels of a column (NULL included). Fine groupings single people out; with
    /// the minimum cell size they also leave most cells withheld.
    pub max_levels: u32,
    /// Whether auditors (tokens with the role `auditor`) may read and verify this site's
    /// audit log through the coordinator. Off by default: the site's own operators can always
    /// read it locally (`verbund audit`).
    pub remote_audit_reads: bool,
    /// Which projects may ask what. No rule: nobody may ask anything.
    #[serde(rename = "project")]
    pub projects: Vec<ProjectRule>,
    /// Differential-privacy settings (profiles dp and feasibility).
    pub dp: DpSettings,
    /// Each project's privacy budget at this site.
    pub budget: BudgetSettings,
    /// What the site declares about its datasets: clipping bounds and public levels.
    #[serde(rename = "dataset")]
    pub datasets: Vec<DatasetRule>,
    /// Which patients count at all: consent this site requires, on top of the objections
    /// (opt-outs) it always honours.
    pub consent: ConsentSettings,
    /// The rules for models (regression) at this site.
    pub regression: RegressionSettings,
}

/// `[consent]`. A site that serves FHIR Consent data (the `consent_provisions` dataset of
/// `verbund import`) always honours patients' objections: a deny provision, active on the
/// day of the query, for the project's purpose or for the project by name removes the patient
/// from every answer of that project. `require` adds a positive requirement.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentSettings {
    /// Consent policy codes (MII broad consent, e.g. "2.16.840.1.113883.3.1937.777.24.5.3.8",
    /// MDAT scientific use) each counted patient must have permitted: an active Consent
    /// provision with the code whose period contains the day of the query, and no active deny
    /// of it. Empty (the default): no positive consent is required.
    pub require: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            profile: Profile::default(),
            i_understand_this_releases_raw_numbers: false,
            min_cell_size: DEFAULT_MIN_CELL_SIZE,
            max_groups: DEFAULT_MAX_GROUPS,
            max_concurrent_queries: DEFAULT_MAX_CONCURRENT_QUERIES,
            max_queued_queries: DEFAULT_MAX_QUEUED_QUERIES,
            max_query_memory_mb: DEFAULT_MAX_QUERY_MEMORY_MB,
            max_cells: DEFAULT_MAX_CELLS,
            max_levels: DEFAULT_MAX_LEVELS,
            remote_audit_reads: false,
            projects: Vec::new(),
            dp: DpSettings::default(),
            budget: BudgetSettings::default(),
            datasets: Vec::new(),
            consent: ConsentSettings::default(),
            regression: RegressionSettings::default(),
        }
    }
}

impl Policy {
    pub fn from_toml(text: &str) -> Result<Self> {
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// The policy as a file holds it.
    pub fn to_toml(&self) -> Result<String> {
        self.validate()?;
        Ok(toml::to_string_pretty(self)?)
    }

    /// A policy of exact numbers withheld under minimum cell size `k` (profile k-only), with
    /// defaults otherwise (no project allowed yet).
    pub fn with_min_cell_size(k: u32) -> Result<Self> {
        let policy = Self { profile: Profile::KOnly, min_cell_size: k, ..Self::default() };
        policy.validate()?;
        Ok(policy)
    }

    /// Adds a rule letting `project` query every dataset and column, with any role.
    pub fn allowing(mut self, project: &str) -> Self {
        self.projects.push(ProjectRule::everything(project));
        self
    }

    pub fn validate(&self) -> Result<()> {
        if self.min_cell_size == 0 {
            return Err(Error::Invalid("min_cell_size must be at least 1".into()));
        }
        if self.max_groups == 0 {
            return Err(Error::Invalid("max_groups must be at least 1".into()));
        }
        if self.max_concurrent_queries == 0 {
            return Err(Error::Invalid("max_concurrent_queries must be at least 1".into()));
        }
        if self.max_query_memory_mb == 0 {
            return Err(Error::Invalid("max_query_memory_mb must be at least 1".into()));
        }
        if self.max_cells == 0 || self.max_levels == 0 {
            return Err(Error::Invalid("max_cells and max_levels must be at least 1".into()));
        }
        if self.profile == Profile::TestOnlyRaw && !self.i_understand_this_releases_raw_numbers {
            return Err(Error::Invalid(
                "profile \"test-only-raw\" releases raw, unprotected numbers; it is for tests on synthetic data, and accepted only with i_understand_this_releases_raw_numbers = true".into(),
            ));
        }
        let dp = &self.dp;
        if !(dp.epsilon_per_query.is_finite() && dp.epsilon_per_query >= 1e-6) {
            return Err(Error::Invalid("dp.epsilon_per_query must be a positive number (at least 0.000001)".into()));
        }
        if !(dp.delta_per_query.is_finite() && dp.delta_per_query > 0.0 && dp.delta_per_query < 1e-3) {
            return Err(Error::Invalid("dp.delta_per_query must be above 0 and below 0.001".into()));
        }
        if dp.max_rows_per_patient == 0 || dp.round_to == 0 {
            return Err(Error::Invalid("dp.max_rows_per_patient and dp.round_to must be at least 1".into()));
        }
        if !(dp.dominance_share > 0.0 && dp.dominance_share <= 1.0) {
            return Err(Error::Invalid("dp.dominance_share must be above 0 and at most 1".into()));
        }
        let budget = &self.budget;
        if !(budget.epsilon.is_finite() && budget.epsilon >= dp.epsilon_per_query) {
            return Err(Error::Invalid(format!(
                "budget.epsilon must be at least dp.epsilon_per_query ({}), or no query could ever be answered",
                dp.epsilon_per_query
            )));
        }
        if !(budget.delta.is_finite() && budget.delta >= dp.delta_per_query) || budget.period_days == 0 {
            return Err(Error::Invalid(
                "budget.delta must be at least dp.delta_per_query, and budget.period_days at least 1".into(),
            ));
        }
        self.regression.validate().map_err(Error::Invalid)?;
        let mut datasets = std::collections::HashSet::new();
        for d in &self.datasets {
            d.validate().map_err(Error::Invalid)?;
            if !datasets.insert(&d.name) {
                return Err(Error::Invalid(format!("dataset '{}' has two [[dataset]] entries; merge them", d.name)));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.projects {
            if p.name.trim().is_empty() {
                return Err(Error::Invalid("a [[project]] needs a name".into()));
            }
            if !names.insert(&p.name) {
                return Err(Error::Invalid(format!("project '{}' has two rules; merge them", p.name)));
            }
            if p.datasets.is_empty() {
                return Err(Error::Invalid(format!("project '{}' names no dataset", p.name)));
            }
        }
        Ok(())
    }

    /// The declared levels of a grouping column, if the site declared them.
    pub fn declared_levels(&self, dataset: &str, column: &str) -> Option<usize> {
        self.datasets.iter().find(|d| d.name == dataset).and_then(|d| d.levels.get(column)).map(Vec::len)
    }

    /// Whether a number with `patients` distinct contributing patients may be released.
    /// An empty cell (0) is withheld like a small one: were it released as 0 while 1..k-1
    /// is withheld, the difference would tell whether a person is among the patients. With
    /// k = 1 there is no small cell to hide, and an empty one is released.
    pub fn releasable(&self, patients: u64) -> bool {
        self.profile == Profile::TestOnlyRaw || self.min_cell_size <= 1 || patients >= u64::from(self.min_cell_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_gets_safe_defaults() {
        assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
        assert_eq!(Policy::default().min_cell_size, 5);
        assert_eq!(Policy::default().profile, Profile::Dp, "the default protects with noise");
    }

    #[test]
    fn bad_policies_are_refused_with_reason() {
        assert!(Policy::from_toml("min_cell_size = 0").unwrap_err().to_string().contains("at least 1"));
        assert!(Policy::from_toml("min_cel_size = 3").unwrap_err().to_string().contains("unknown field"));
        assert!(Policy::from_toml("min_cell_size = \"five\"").is_err());
    }

    const EXAMPLES: [&str; 4] = [
        include_str!("../examples/default.toml"),
        include_str!("../examples/registry-strict.toml"),
        include_str!("../examples/feasibility.toml"),
        include_str!("../examples/test-only-raw.toml"),
    ];

    #[test]
    fn example_policies_parse() {
        let profiles: Vec<Profile> = EXAMPLES.iter().map(|text| Policy::from_toml(text).unwrap().profile).collect();
        assert_eq!(profiles, [Profile::Dp, Profile::Dp, Profile::Feasibility, Profile::TestOnlyRaw]);
        let raw = EXAMPLES[3].replace("i_understand_this_releases_raw_numbers = true", "");
        let err = Policy::from_toml(&raw).unwrap_err().to_string();
        assert!(err.contains("i_understand_this_releases_raw_numbers = true"), "{err}");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        for text in EXAMPLES {
            let policy = Policy::from_toml(text).unwrap();
            let written = policy.to_toml().unwrap();
            assert_eq!(Policy::from_toml(&written).unwrap(), policy, "{written}");
        }
        let open = Policy::with_min_cell_size(3).unwrap().allowing("study");
        let written = open.to_toml().unwrap();
        assert!(written.starts_with("profile = \"k-only\"\n") && written.contains("min_cell_size = 3\n"), "{written}");
        assert!(written.contains("[[project]]"), "{written}");
        assert_eq!(Policy::from_toml(&written).unwrap(), open);
        assert!(Policy { min_cell_size: 0, ..open }.to_toml().is_err(), "an invalid policy is not written");
    }

    #[test]
    fn releasable_threshold() {
        let p = Policy::with_min_cell_size(5).unwrap();
        assert!(!p.releasable(0), "an empty cell looks like a small one");
        assert!(!p.releasable(1));
        assert!(!p.releasable(4));
        assert!(p.releasable(5));
    }
}
