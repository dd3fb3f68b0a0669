//! Differential privacy for one request: what it may ask ([`Policy::plan_private`], before
//! anything runs), how much noise each number gets and what it costs, and the checker that
//! turns true cell statistics into the noisy numbers that may leave the node
//! ([`release_private_group`]).
//!
//! The privacy unit is one patient at one site. The node counts at most
//! `max_rows_per_patient` (m) rows of a patient per query and clips values to declared
//! bounds, so one patient changes a whole answer by at most: m rows (rows, non-null values,
//! histogram bins, over all cells together), m cells of patients (1 without grouping), and
//! m × the clipping bound for sums. Each number of a cell gets discrete Laplace noise with
//! scale t = Δ · P / ε, P being the numbers per cell (basic composition; cells share ε by
//! parallel composition, because Δ is the L1 change over all of them).
//!
//! Floors stay and are decided on the true values first: a cell is released only when its
//! true patients reach the minimum cell size k AND its noisy count passes a threshold τ set
//! so that, where one patient moves a cell across the floor, it shows with probability at
//! most δ (Laplace thresholding: Wilson et al., PoPETs 2020). The same threshold makes
//! groups that come from the data differentially private (partition selection).

use crate::noise::{CellNoise, Scale, Seed};
use crate::profile::{DatasetRule, Level, Profile};
use crate::{Policy, empty_result};
use verbund_proto::v1 as pb;
use verbund_proto::v1::partial_aggregate::State;

/// Bumped whenever the way noise is derived or applied changes: new noise for every question.
pub const MECHANISM_VERSION: u32 = 1;

/// Why a site does not run a request under its privacy profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyRefusal {
    #[error(
        "column '{column}' of dataset '{dataset}' has no clipping bounds at this site, and sums, means, variances and cross-products are released with differential privacy only for bounded columns; the site can add `bounds = {{ {column} = [low, high] }}` to the [[dataset]] named '{dataset}' in its policy"
    )]
    MissingBounds { dataset: String, column: String },
    #[error(
        "grouping by '{column}' of dataset '{dataset}' needs its levels declared at this site (groups that come from the data alone could single people out); the site can add `levels = {{ {column} = [...] }}` to the [[dataset]] named '{dataset}' in its policy, or allow noisy partition selection (dp.partition_selection = true); grouping by bins works without either"
    )]
    MissingLevels { dataset: String, column: String },
    #[error(
        "this site answers feasibility queries only: patient counts (count(DISTINCT <patient key>)), overall or by declared levels or bins; {what} is not one"
    )]
    FeasibilityOnly { what: String },
}

/// The shape of a checked request, as far as privacy is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape<'a> {
    pub dataset: &'a str,
    /// Groupings by a column's values (need declared levels or partition selection).
    pub group_columns: Vec<&'a str>,
    /// Groupings by a patient attribute: a column of another dataset, whose levels that
    /// dataset's rule declares.
    pub patient_columns: Vec<PatientColumn<'a>>,
    /// Groupings by bins (their domain comes from the request).
    pub binned_groupings: usize,
    pub aggregates: Vec<AggregateShape<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatientColumn<'a> {
    pub dataset: &'a str,
    pub column: &'a str,
    /// The column's name in the query's rows (the plan's levels are keyed by it).
    pub alias: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggregateShape<'a> {
    CountRows,
    CountPatients,
    Count {
        column: &'a str,
    },
    /// Sums and means: count and sum of the clipped values.
    Sum {
        column: &'a str,
        integer: bool,
    },
    /// Variances: count, sum and sum of squares.
    Moments {
        column: &'a str,
        integer: bool,
    },
    Products {
        left: &'a str,
        right: &'a str,
        left_integer: bool,
        right_integer: bool,
    },
    Histogram {
        column: &'a str,
    },
}

/// How the node turns a column's values into integer units: clip to [low, high], subtract
/// `centre`, divide by `unit`, round.
#[derive(Debug, Clone, PartialEq)]
pub struct Units {
    pub column: String,
    pub low: f64,
    pub high: f64,
    pub centre: f64,
    pub unit: f64,
    /// The largest |value| in units after clipping and centring.
    pub bound: u64,
}

/// One noisy number: its scale, and the noisy floor it must reach to be released (when a
/// floor applies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noisy {
    pub scale: Scale,
    pub threshold: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggregatePlan {
    Rows(Noisy),
    /// The cell's own patient count (the plan's `patients`).
    Patients,
    Count(Noisy),
    Sum {
        count: Noisy,
        sum: Scale,
        units: Units,
        squares: Option<Scale>,
    },
    Products {
        count: Noisy,
        sum: Scale,
        left: Units,
        right: Units,
    },
    Histogram(Noisy),
}

/// What the node needs to answer one request under differential privacy.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivatePlan {
    /// At most this many rows per patient enter the query.
    pub rows_per_patient: u32,
    /// Group-by columns with declared levels: only these values (and NULL) form groups.
    pub levels: Vec<(String, Vec<Level>)>,
    /// The cell's noisy patient count, when it is released or needed for the floor.
    pub patients: Option<Noisy>,
    /// The true floor (minimum cell size) on patients and contributors; 0 when none.
    pub floor: u64,
    pub aggregates: Vec<AggregatePlan>,
    /// ε and δ the request costs (charged once per distinct request).
    pub epsilon: f64,
    pub delta: f64,
}

impl Policy {
    pub(crate) fn dataset_rule(&self, dataset: &str) -> Option<&DatasetRule> {
        self.datasets.iter().find(|d| d.name == dataset)
    }

    /// Checks a request against the privacy profile and calibrates its noise. `None` under
    /// the profiles without noise.
    pub fn plan_private(&self, shape: &Shape<'_>) -> Result<Option<PrivatePlan>, PrivacyRefusal> {
        if !self.profile.is_private() {
            return Ok(None);
        }
        let empty = DatasetRule::default();
        let rule = self.dataset_rule(shape.dataset).unwrap_or(&empty);
        if self.profile == Profile::Feasibility
            && let Some(a) = shape.aggregates.iter().find(|a| !matches!(a, AggregateShape::CountPatients))
        {
            return Err(PrivacyRefusal::FeasibilityOnly { what: describe(a) });
        }
        let mut levels = Vec::new();
        for column in &shape.group_columns {
            match rule.levels.get(*column) {
                Some(l) => levels.push((column.to_string(), l.clone())),
                None if self.dp.partition_selection => {}
                None => {
                    return Err(PrivacyRefusal::MissingLevels {
                        dataset: shape.dataset.into(),
                        column: column.to_string(),
                    });
                }
            }
        }
        for p in &shape.patient_columns {
            match self.dataset_rule(p.dataset).and_then(|r| r.levels.get(p.column)) {
                Some(l) => levels.push((p.alias.to_string(), l.clone())),
                None if self.dp.partition_selection => {}
                None => {
                    return Err(PrivacyRefusal::MissingLevels { dataset: p.dataset.into(), column: p.column.into() });
                }
            }
        }
        let units =
            |column: &str, integer: bool, centred: bool| units_of(rule, shape.dataset, column, integer, centred);

        let m = if rule.one_row_per_patient { 1 } else { self.dp.max_rows_per_patient.max(1) };
        let m64 = u64::from(m);
        let grouped =
            !shape.group_columns.is_empty() || !shape.patient_columns.is_empty() || shape.binned_groupings > 0;
        let k = u64::from(self.min_cell_size);
        // Floors on values and bins need k > 1; cells from the data need a threshold even at k = 1.
        let value_floors = k > 1;
        let cell_floor = grouped || k > 1;
        let wants_patients = shape.aggregates.iter().any(|a| matches!(a, AggregateShape::CountPatients));

        // Numbers per cell, and which of them pass a noisy threshold.
        let mut parts = u32::from(cell_floor || wants_patients);
        let mut thresholded = u32::from(cell_floor);
        for a in &shape.aggregates {
            let (p, t) = match a {
                AggregateShape::CountPatients => (0, 0),
                AggregateShape::CountRows => (1, 0),
                AggregateShape::Count { .. } | AggregateShape::Histogram { .. } => (1, 1),
                AggregateShape::Sum { .. } | AggregateShape::Products { .. } => (2, 1),
                AggregateShape::Moments { .. } => (3, 1),
            };
            parts += p;
            thresholded += if value_floors { t } else { 0 };
        }
        let epsilon_micro = micro(self.dp.epsilon_per_query);
        let delta = if thresholded > 0 { self.dp.delta_per_query } else { 0.0 };
        let delta_each = delta / f64::from(thresholded.max(1)) / m as f64;
        let noisy = |sensitivity: u64, floor: Option<u64>| {
            let scale = Scale::laplace(sensitivity, parts, epsilon_micro);
            let threshold = floor.map(|f| clamp_i64(f.saturating_add(scale.tail(delta_each))));
            Noisy { scale, threshold }
        };
        // Where one patient moves a value across the floor, it has at most k patients' rows.
        let value_floor = value_floors.then_some(k * m64);
        let patients = (cell_floor || wants_patients).then(|| {
            let sensitivity = if grouped { m64 } else { 1 };
            noisy(sensitivity, cell_floor.then_some(k.max(1)))
        });
        let mut aggregates = Vec::with_capacity(shape.aggregates.len());
        for a in &shape.aggregates {
            aggregates.push(match *a {
                AggregateShape::CountPatients => AggregatePlan::Patients,
                AggregateShape::CountRows => AggregatePlan::Rows(noisy(m64, None)),
                AggregateShape::Count { .. } => AggregatePlan::Count(noisy(m64, value_floor)),
                AggregateShape::Histogram { .. } => AggregatePlan::Histogram(noisy(m64, value_floor)),
                AggregateShape::Sum { column, integer } | AggregateShape::Moments { column, integer } => {
                    let units = units(column, integer, true)?;
                    let squares = matches!(a, AggregateShape::Moments { .. }).then(|| {
                        Scale::laplace(
                            m64.saturating_mul(units.bound.saturating_mul(units.bound)),
                            parts,
                            epsilon_micro,
                        )
                    });
                    AggregatePlan::Sum {
                        count: noisy(m64, value_floor),
                        sum: Scale::laplace(m64.saturating_mul(units.bound), parts, epsilon_micro),
                        units,
                        squares,
                    }
                }
                AggregateShape::Products { left, right, left_integer, right_integer } => {
                    let (left, right) = (units(left, left_integer, false)?, units(right, right_integer, false)?);
                    let bound = m64.saturating_mul(left.bound).saturating_mul(right.bound);
                    AggregatePlan::Products {
                        count: noisy(m64, value_floor),
                        sum: Scale::laplace(bound, parts, epsilon_micro),
                        left,
                        right,
                    }
                }
            });
        }
        Ok(Some(PrivatePlan {
            rows_per_patient: m,
            levels,
            patients,
            floor: if cell_floor { k.max(1) } else { 0 },
            aggregates,
            epsilon: epsilon_micro as f64 / 1e6,
            delta,
        }))
    }

    /// A digest of everything that shapes the noise of requests on `dataset`: a change of
    /// settings gives new noise (and a new charge) for every question.
    pub fn mechanism_digest(&self, dataset: &str) -> Vec<u8> {
        let rule = self.dataset_rule(dataset);
        let described =
            format!("v{MECHANISM_VERSION}|{}|k={}|{:?}|{:?}", self.profile.label(), self.min_cell_size, self.dp, rule);
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, described.as_bytes()).as_ref().to_vec()
    }
}

/// How a column's values are put in integer units: its declared bounds, its resolution, centred
/// on the middle of the bounds (or on 0); no bounds: `MissingBounds`.
pub(crate) fn units_of(
    rule: &DatasetRule,
    dataset: &str,
    column: &str,
    integer: bool,
    centred: bool,
) -> Result<Units, PrivacyRefusal> {
    let missing = || PrivacyRefusal::MissingBounds { dataset: dataset.into(), column: column.into() };
    let [low, high] = *rule.bounds.get(column).ok_or_else(missing)?;
    let unit = rule.unit(column, integer).ok_or_else(missing)?;
    let centre = if centred { (low + high) / 2.0 } else { 0.0 };
    let bound = ((high - centre).abs().max((low - centre).abs()) / unit).ceil() as u64;
    Ok(Units { column: column.into(), low, high, centre, unit, bound: bound.max(1) })
}

pub(crate) fn micro(epsilon: f64) -> u64 {
    (epsilon * 1e6).round().max(1.0) as u64
}

pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn describe(a: &AggregateShape<'_>) -> String {
    match a {
        AggregateShape::CountRows => "count(*)".into(),
        AggregateShape::CountPatients => "count(DISTINCT patient)".into(),
        AggregateShape::Count { column } => format!("count({column})"),
        AggregateShape::Sum { column, .. } => format!("a sum or mean of '{column}'"),
        AggregateShape::Moments { column, .. } => format!("a variance of '{column}'"),
        AggregateShape::Products { left, right, .. } => format!("sum({left} * {right})"),
        AggregateShape::Histogram { column } => format!("a histogram of '{column}'"),
    }
}

/// One cell's true statistics, as the engine computed them over the bounded rows. They
/// decide the floors and receive the noise; none of them leaves the node as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TrueCell {
    pub keys: Vec<pb::Literal>,
    pub patients: u64,
    pub aggregates: Vec<TrueAggregate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrueAggregate {
    Rows(i64),
    Patients,
    Count { count: i64, contributors: u64 },
    Sum { count: i64, sum: i64, squares: i64, contributors: u64 },
    Histogram { counts: Vec<i64>, patients: Vec<u64> },
}

fn withheld() -> pb::PartialAggregate {
    pb::PartialAggregate { state: Some(State::Withheld(pb::Withheld {})) }
}

/// Whether a true floor and a noisy threshold both let a number through.
fn passes(floor: u64, true_patients: u64, noisy: i64, threshold: Option<i64>) -> bool {
    true_patients >= floor && threshold.is_none_or(|t| noisy >= t)
}

impl Policy {
    /// Post-processing of a released count (costs nothing): rounding, then "below threshold".
    fn visible_count(&self, noisy: i64) -> Option<i64> {
        let r = i64::from(self.dp.round_to.max(1));
        let rounded = if r > 1 { (noisy as f64 / r as f64).round() as i64 * r } else { noisy };
        (self.dp.suppress_below == 0 || rounded >= clamp_i64(self.dp.suppress_below)).then_some(rounded)
    }

    /// Whether one patient could make up more than the dominance share of a noisy sum
    /// (bounds against the noisy value: post-processing, no cost).
    fn dominated(&self, rows_per_patient: u32, bound: f64, estimate: f64) -> bool {
        f64::from(rows_per_patient) * bound > self.dp.dominance_share * estimate.abs()
    }
}

/// Applies floors, noise, thresholds, dominance and rounding to one cell, in that order.
/// `None`: the cell is withheld, and nothing of it leaves the node.
pub fn release_private_group(
    policy: &Policy,
    plan: &PrivatePlan,
    seed: &Seed,
    cell: TrueCell,
    encoded_keys: &[u8],
    out: &mut pb::PartialResult,
) -> Result<Option<pb::GroupPartial>, String> {
    if cell.patients < plan.floor {
        out.withheld_groups += 1;
        return Ok(None);
    }
    // Every number of the cell is drawn, in plan order, whatever is released: the noise of
    // one number never depends on whether another was withheld.
    let mut noise: CellNoise = seed.cell(encoded_keys);
    let noisy_patients = match &plan.patients {
        Some(p) => {
            let n = clamp_i64(cell.patients).saturating_add(noise.laplace(p.scale)?);
            if !passes(plan.floor, cell.patients, n, p.threshold) {
                out.withheld_groups += 1;
                return Ok(None);
            }
            Some(n)
        }
        None => None,
    };
    let m = plan.rows_per_patient;
    let mut aggregates = Vec::with_capacity(plan.aggregates.len());
    for (plan_agg, true_agg) in plan.aggregates.iter().zip(cell.aggregates) {
        let count = |policy: &Policy, n: i64| match policy.visible_count(n) {
            Some(c) => pb::PartialAggregate { state: Some(State::NoisyCount(pb::NoisyCount { count: c })) },
            None => withheld(),
        };
        let released = match (plan_agg, true_agg) {
            (AggregatePlan::Patients, TrueAggregate::Patients) => match noisy_patients {
                Some(n) => count(policy, n),
                None => return Err("the plan has no patient count".into()),
            },
            (AggregatePlan::Rows(p), TrueAggregate::Rows(rows)) => {
                count(policy, rows.saturating_add(noise.laplace(p.scale)?))
            }
            (AggregatePlan::Count(p), TrueAggregate::Count { count: n, contributors }) => {
                let noisy = n.saturating_add(noise.laplace(p.scale)?);
                if passes(value_floor(policy, plan), contributors, noisy, p.threshold) {
                    count(policy, noisy)
                } else {
                    withheld()
                }
            }
            (
                AggregatePlan::Sum { count: c, sum, units, squares },
                TrueAggregate::Sum { count: n, sum: s, squares: s2, contributors },
            ) => {
                let noisy_n = n.saturating_add(noise.laplace(c.scale)?);
                let noisy_s = s.saturating_add(noise.laplace(*sum)?);
                let noisy_s2 = match squares {
                    Some(scale) => s2.saturating_add(noise.laplace(*scale)?),
                    None => 0,
                };
                let estimate = units.centre * noisy_n as f64 + units.unit * noisy_s as f64;
                let bound = units.low.abs().max(units.high.abs());
                if passes(value_floor(policy, plan), contributors, noisy_n, c.threshold)
                    && !policy.dominated(m, bound, estimate)
                {
                    pb::PartialAggregate {
                        state: Some(State::NoisySum(pb::NoisySum {
                            count: noisy_n,
                            sum: noisy_s,
                            unit: units.unit,
                            centre: units.centre,
                            sum_squares: noisy_s2,
                        })),
                    }
                } else {
                    withheld()
                }
            }
            (
                AggregatePlan::Products { count: c, sum, left, right },
                TrueAggregate::Sum { count: n, sum: s, contributors, .. },
            ) => {
                let noisy_n = n.saturating_add(noise.laplace(c.scale)?);
                let noisy_s = s.saturating_add(noise.laplace(*sum)?);
                let unit = left.unit * right.unit;
                let bound = left.low.abs().max(left.high.abs()) * right.low.abs().max(right.high.abs());
                if passes(value_floor(policy, plan), contributors, noisy_n, c.threshold)
                    && !policy.dominated(m, bound, unit * noisy_s as f64)
                {
                    pb::PartialAggregate {
                        state: Some(State::NoisySum(pb::NoisySum {
                            count: noisy_n,
                            sum: noisy_s,
                            unit,
                            centre: 0.0,
                            sum_squares: 0,
                        })),
                    }
                } else {
                    withheld()
                }
            }
            (AggregatePlan::Histogram(p), TrueAggregate::Histogram { counts, patients }) => {
                let mut released = Vec::with_capacity(counts.len());
                let mut withheld_bins = Vec::new();
                for (i, rows) in counts.iter().enumerate() {
                    let noisy = rows.saturating_add(noise.laplace(p.scale)?);
                    let bin_patients = patients.get(i).copied().unwrap_or(0);
                    match policy.visible_count(noisy) {
                        Some(c) if passes(value_floor(policy, plan), bin_patients, noisy, p.threshold) => {
                            released.push(c)
                        }
                        _ => {
                            released.push(0);
                            withheld_bins.push(i as u32);
                        }
                    }
                }
                out.withheld_bins += withheld_bins.len() as u32;
                pb::PartialAggregate {
                    state: Some(State::NoisyHistogram(pb::NoisyHistogram { counts: released, withheld_bins })),
                }
            }
            _ => return Err("a computed aggregate does not match its plan".into()),
        };
        if matches!(released.state, Some(State::Withheld(_))) {
            out.withheld_values += 1;
        }
        aggregates.push(released);
    }
    Ok(Some(pb::GroupPartial { keys: cell.keys, aggregates }))
}

/// The true floor on a value's contributors and a bin's patients (k > 1 only).
fn value_floor(policy: &Policy, plan: &PrivatePlan) -> u64 {
    if policy.min_cell_size > 1 { plan.floor } else { 0 }
}

/// An answer with no cell yet, stamped with the profile.
pub fn empty_private_result(policy: &Policy) -> pb::PartialResult {
    pb::PartialResult { profile: policy.profile.label().into(), ..empty_result(policy) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::NoiseKey;

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text).unwrap()
    }

    const BOUNDED: &str = r#"
        [[dataset]]
        name = "patients"
        one_row_per_patient = true
        bounds = { age = [0, 120], bmi = [10, 80] }
        levels = { sex = ["f", "m", "d"] }
    "#;

    fn shape<'a>(aggregates: Vec<AggregateShape<'a>>, group_columns: Vec<&'a str>) -> Shape<'a> {
        Shape { dataset: "patients", group_columns, patient_columns: vec![], binned_groupings: 0, aggregates }
    }

    #[test]
    fn sums_need_bounds_and_groupings_need_levels() {
        let p = policy(BOUNDED);
        let err = p.plan_private(&shape(vec![AggregateShape::Sum { column: "weight", integer: false }], vec![]));
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("'weight'") && msg.contains("bounds = { weight = [low, high] }"), "{msg}");
        let err = p.plan_private(&shape(vec![AggregateShape::CountPatients], vec!["region"])).unwrap_err();
        assert!(matches!(err, PrivacyRefusal::MissingLevels { .. }), "{err}");
        assert!(p.plan_private(&shape(vec![AggregateShape::CountPatients], vec!["sex"])).unwrap().is_some());
        let open = policy(&format!("{BOUNDED}\n[dp]\npartition_selection = true"));
        assert!(open.plan_private(&shape(vec![AggregateShape::CountPatients], vec!["region"])).is_ok());
        // Without noise nothing is planned.
        assert_eq!(Policy::with_min_cell_size(5).unwrap().plan_private(&shape(vec![], vec![])).unwrap(), None);
    }

    #[test]
    fn feasibility_answers_patient_counts_only() {
        let p = policy(&format!("profile = \"feasibility\"\nmin_cell_size = 1\n{BOUNDED}"));
        assert!(p.plan_private(&shape(vec![AggregateShape::CountPatients], vec!["sex"])).is_ok());
        let err = p.plan_private(&shape(vec![AggregateShape::CountRows], vec![])).unwrap_err();
        assert!(err.to_string().contains("count(*) is not one"), "{err}");
    }

    #[test]
    fn calibration_matches_hand_computed_values() {
        let p = policy(BOUNDED);
        // Mean age, ungrouped, one row per patient: parts = patients (floor) + count + sum = 3.
        let plan = p.plan_private(&shape(vec![AggregateShape::Sum { column: "age", integer: true }], vec![])).unwrap();
        let plan = plan.unwrap();
        assert_eq!(plan.rows_per_patient, 1);
        assert_eq!(plan.patients.unwrap().scale.as_f64(), 3.0, "t = Δ 1 × 3 parts / ε 1");
        let AggregatePlan::Sum { count, sum, units, squares: None } = &plan.aggregates[0] else { panic!() };
        assert_eq!((units.centre, units.unit, units.bound), (60.0, 1.0, 60));
        assert_eq!(sum.as_f64(), 180.0, "t = 60 units × 3 / 1");
        assert_eq!(count.scale.as_f64(), 3.0);
        // δ 1e-7 over 2 thresholded numbers: the patient floor is 5 + tail(t = 3, 5e-8).
        let tail = Scale::laplace(1, 3, 1_000_000).tail(5e-8);
        assert_eq!(plan.patients.unwrap().threshold, Some(5 + tail as i64));
        assert_eq!((plan.epsilon, plan.delta), (1.0, 1e-7));
        // A count of patients alone, k = 1, no grouping: pure ε, no threshold, t = 1.
        let p1 = policy(&format!("min_cell_size = 1\n{BOUNDED}"));
        let plan = p1.plan_private(&shape(vec![AggregateShape::CountPatients], vec![])).unwrap().unwrap();
        assert_eq!(plan.patients.unwrap(), Noisy { scale: Scale::laplace(1, 1, 1_000_000), threshold: None });
        assert_eq!(plan.delta, 0.0);
    }

    fn release(p: &Policy, plan: &PrivatePlan, cell: TrueCell) -> Option<pb::GroupPartial> {
        let seed = Seed::for_request(&NoiseKey::from_bytes(&[9; 32]).unwrap(), b"q", "v", b"m");
        let mut out = empty_private_result(p);
        release_private_group(p, plan, &seed, cell, b"cell", &mut out).unwrap()
    }

    #[test]
    fn small_cells_are_withheld_on_the_true_count_and_large_ones_get_noise() {
        let p = policy(BOUNDED);
        let plan = p
            .plan_private(&shape(
                vec![AggregateShape::CountPatients, AggregateShape::Sum { column: "bmi", integer: false }],
                vec!["sex"],
            ))
            .unwrap()
            .unwrap();
        let cell = |patients: u64| TrueCell {
            keys: vec![],
            patients,
            aggregates: vec![
                TrueAggregate::Patients,
                TrueAggregate::Sum { count: patients as i64, sum: 1234, squares: 0, contributors: patients },
            ],
        };
        assert_eq!(release(&p, &plan, cell(4)), None, "under the true floor");
        assert_eq!(release(&p, &plan, cell(6)), None, "over the true floor but under the noisy threshold");
        let big = release(&p, &plan, cell(5000)).unwrap();
        let Some(State::NoisyCount(c)) = &big.aggregates[0].state else { panic!("{big:?}") };
        assert_ne!(c.count, 5000, "noise is added");
        assert!((c.count - 5000).abs() < 200, "{c:?}");
        assert_eq!(release(&p, &plan, cell(5000)).unwrap(), big, "the same request gets the same numbers");
    }

    #[test]
    fn a_single_patient_cannot_dominate_a_released_sum() {
        // Bounds [0, 1e6] on a column where the cell's sum is small: one patient could be most of it.
        let p =
            policy("[[dataset]]\nname = \"patients\"\none_row_per_patient = true\nbounds = { cost = [0, 1000000] }");
        let plan = p
            .plan_private(&shape(vec![AggregateShape::Sum { column: "cost", integer: true }], vec![]))
            .unwrap()
            .unwrap();
        let cell = |sum_units: i64| TrueCell {
            keys: vec![],
            patients: 100_000,
            aggregates: vec![TrueAggregate::Sum { count: 100_000, sum: sum_units, squares: 0, contributors: 100_000 }],
        };
        // Everyone near the centre: the sum ~ 5e10 is far above one patient's 1e6.
        let released = release(&p, &plan, cell(0)).unwrap();
        assert!(matches!(released.aggregates[0].state, Some(State::NoisySum(_))));
        // The rule itself, against the noisy estimate: one patient at the bound (1e6) would be
        // more than 90 % of a sum of 1e6, and not of 5e10. (Under DP the sum's own noise is at
        // least the bound's size, so the rule rarely decides; the clipping does the work.)
        assert!(p.dominated(1, 1e6, 1.05e6) && p.dominated(1, 1e6, -1.05e6));
        assert!(!p.dominated(1, 1e6, 5e10) && !p.dominated(1, 1e6, 1.2e6));
        assert!(p.dominated(5, 1e6, 5e6), "five rows of one patient");
    }

    #[test]
    fn feasibility_counts_are_rounded_and_small_ones_are_below_threshold() {
        let p = policy(
            "profile = \"feasibility\"\nmin_cell_size = 1\n[dp]\nepsilon_per_query = 0.5\nround_to = 10\nsuppress_below = 20",
        );
        let plan = p.plan_private(&shape(vec![AggregateShape::CountPatients], vec![])).unwrap().unwrap();
        let cell = |n| TrueCell { keys: vec![], patients: n, aggregates: vec![TrueAggregate::Patients] };
        let Some(State::NoisyCount(c)) = release(&p, &plan, cell(1234)).unwrap().aggregates[0].state else { panic!() };
        assert_eq!(c.count % 10, 0);
        assert!((c.count - 1234).abs() <= 30, "{c:?}");
        assert_eq!(release(&p, &plan, cell(3)).unwrap().aggregates[0].state, Some(State::Withheld(pb::Withheld {})));
    }
}
