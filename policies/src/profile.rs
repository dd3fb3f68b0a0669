//! How a site protects what it releases: the privacy profile, the differential-privacy
//! settings, the project budget, and what the site declares about its datasets (clipping
//! bounds, public levels) so that noise can be calibrated.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protection a site applies to every number it releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Differential privacy with a durable budget per project, on top of the minimum cell
    /// size: the research default.
    #[default]
    Dp,
    /// Only noisy patient counts (overall or over declared levels), rounded, as the MII
    /// feasibility portal releases them.
    Feasibility,
    /// Exact numbers, withheld under the minimum cell size. Open to differencing (a mean of a
    /// group and of the same group less one patient reveal that patient's value): kept for
    /// comparison and for sites whose outputs are reviewed by hand.
    KOnly,
    /// Raw numbers: no floor, no noise, no budget. For tests on synthetic data only; every
    /// answer, audit record and log line says so.
    TestOnlyRaw,
}

impl Profile {
    pub fn label(self) -> &'static str {
        match self {
            Profile::Dp => "dp",
            Profile::Feasibility => "feasibility",
            Profile::KOnly => "k-only",
            Profile::TestOnlyRaw => "test-only-raw",
        }
    }

    /// Whether answers carry noise and are charged to a budget.
    pub fn is_private(self) -> bool {
        matches!(self, Profile::Dp | Profile::Feasibility)
    }
}

/// Differential-privacy settings (profiles `dp` and `feasibility`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpSettings {
    /// ε one query costs, split evenly over the numbers it releases per cell (basic
    /// composition); disjoint cells and bins share it (parallel composition).
    pub epsilon_per_query: f64,
    /// δ one query costs when it has floors or data-derived groups (the noisy thresholds
    /// that make a minimum cell size differentially private fail with this probability).
    pub delta_per_query: f64,
    /// At most this many rows of one patient count in a query (the rest are passed over, in
    /// an order that depends only on the rows' values). Bounds what one patient can change.
    pub max_rows_per_patient: u32,
    /// Allow grouping by a column without declared levels. Groups then come from the data
    /// and appear only when their noisy patient count passes a threshold. Off: such a
    /// request is refused and asked to use a column with declared levels.
    pub partition_selection: bool,
    /// A sum, mean, variance or cross-product is withheld when one patient could make up
    /// more than this share of it (under DP: the clipping bound times the rows per patient,
    /// against the noisy sum).
    pub dominance_share: f64,
    /// Released counts are rounded to a multiple of this (the MII rounds to 10).
    pub round_to: u32,
    /// Counts below this (after noise) are released as "below threshold" (MII: 20). 0: off.
    pub suppress_below: u64,
}

impl Default for DpSettings {
    fn default() -> Self {
        Self {
            epsilon_per_query: 1.0,
            delta_per_query: 1e-7,
            max_rows_per_patient: 5,
            partition_selection: false,
            dominance_share: 0.9,
            round_to: 1,
            suppress_below: 0,
        }
    }
}

/// Each project's privacy budget at this site, renewed every period.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    pub epsilon: f64,
    pub delta: f64,
    /// Periods start at 1970-01-01 UTC and last this many days.
    pub period_days: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self { epsilon: 10.0, delta: 1e-6, period_days: 30 }
    }
}

/// A value of a declared level: what a grouping column may take.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Level {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// What the site declares about one dataset for differential privacy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetRule {
    pub name: String,
    /// Every patient has at most one row (then one row per patient bounds contributions).
    pub one_row_per_patient: bool,
    /// Clipping bounds `[low, high]` per numeric column: values outside are moved to the
    /// nearer bound before they are summed. Required under DP for every column a sum, mean,
    /// variance or cross-product touches.
    pub bounds: BTreeMap<String, [f64; 2]>,
    /// The unit values are counted in (default: 1 for integer columns with a range up to
    /// 65536, else the range / 65536).
    pub resolution: BTreeMap<String, f64>,
    /// The public domain of grouping columns: only these values (and NULL) form groups.
    pub levels: BTreeMap<String, Vec<Level>>,
}

/// The largest offset from the centre, in units, a value may have; keeps sums of squares of
/// up to 9 million rows within 64 bits.
pub const MAX_HALF_RANGE_UNITS: f64 = 1_000_000.0;

impl DatasetRule {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let at = |what: &str| format!("[[dataset]] '{}': {what}", self.name);
        if self.name.trim().is_empty() {
            return Err("a [[dataset]] needs a name".into());
        }
        for (column, [lo, hi]) in &self.bounds {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(at(&format!("bounds of '{column}' must be two finite numbers, low < high")));
            }
            if let Some(unit) = self.resolution.get(column)
                && (!unit.is_finite() || *unit <= 0.0 || (hi - lo) / 2.0 / unit > MAX_HALF_RANGE_UNITS)
            {
                return Err(at(&format!(
                    "resolution of '{column}' must be positive and at least (high - low) / {}",
                    2.0 * MAX_HALF_RANGE_UNITS
                )));
            }
        }
        if let Some(column) = self.resolution.keys().find(|c| !self.bounds.contains_key(*c)) {
            return Err(at(&format!("'{column}' has a resolution but no bounds")));
        }
        if let Some((column, _)) = self.levels.iter().find(|(_, l)| l.is_empty()) {
            return Err(at(&format!("levels of '{column}' are empty")));
        }
        Ok(())
    }

    /// The unit a column's values are counted in.
    pub fn unit(&self, column: &str, integer: bool) -> Option<f64> {
        let [lo, hi] = *self.bounds.get(column)?;
        Some(match self.resolution.get(column) {
            Some(unit) => *unit,
            None if integer && hi - lo <= 65536.0 => 1.0,
            None => (hi - lo) / 65536.0,
        })
    }
}
