//! Output disclosure control: the single gate between a node's computed aggregates and the
//! wire. Everything a node answers is built by [`release`]. A withheld group contributes
//! nothing but the count of withheld groups (for operators); a withheld value inside a
//! released group is sent as `Withheld`, indistinguishable whether it had no contributing
//! patient or too few.

use crate::Policy;
use verbund_proto::v1 as pb;

/// One aggregate as computed, before the policy has seen it.
#[derive(Debug, Clone, PartialEq)]
pub enum CandidateAggregate {
    /// A number whose contributors are the group's own patients (counts of rows and of
    /// patients): released with its group.
    Plain(pb::PartialAggregate),
    /// A number over the rows where its column (or both columns) is set: released only
    /// when those rows hold at least k distinct patients, whatever the group's size.
    Contributed { value: pb::PartialAggregate, contributors: u64 },
    /// Row counts per bin with the distinct patients per bin, checked bin by bin.
    Histogram { counts: Vec<u64>, patients: Vec<u64> },
}

/// One group as computed: its key, its distinct patients and its aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateGroup {
    pub keys: Vec<pb::Literal>,
    pub patients: u64,
    pub aggregates: Vec<CandidateAggregate>,
}

fn withheld() -> pb::PartialAggregate {
    pb::PartialAggregate { state: Some(pb::partial_aggregate::State::Withheld(pb::Withheld {})) }
}

/// Applies the policy to one computed group: `None` when the group itself is withheld.
/// Counts what it withholds inside a released group into `out`.
pub fn release_group(policy: &Policy, group: CandidateGroup, out: &mut pb::PartialResult) -> Option<pb::GroupPartial> {
    if !policy.releasable(group.patients) {
        out.withheld_groups += 1;
        return None;
    }
    let aggregates = group
        .aggregates
        .into_iter()
        .map(|agg| match agg {
            CandidateAggregate::Plain(p) => p,
            CandidateAggregate::Contributed { value, contributors } => {
                if policy.releasable(contributors) {
                    value
                } else {
                    out.withheld_values += 1;
                    withheld()
                }
            }
            CandidateAggregate::Histogram { mut counts, patients } => {
                let mut withheld_bins = Vec::new();
                for (i, count) in counts.iter_mut().enumerate() {
                    let bin_patients = patients.get(i).copied().unwrap_or(0);
                    if !policy.releasable(bin_patients) {
                        *count = 0;
                        withheld_bins.push(i as u32);
                    }
                }
                out.withheld_bins += withheld_bins.len() as u32;
                pb::PartialAggregate {
                    state: Some(pb::partial_aggregate::State::Histogram(pb::HistogramState { counts, withheld_bins })),
                }
            }
        })
        .collect();
    Some(pb::GroupPartial { keys: group.keys, aggregates })
}

/// Applies the policy to computed groups and builds what may leave the node.
pub fn release(policy: &Policy, groups: impl IntoIterator<Item = CandidateGroup>) -> pb::PartialResult {
    let mut out = empty_result(policy);
    for group in groups {
        if let Some(g) = release_group(policy, group, &mut out) {
            out.groups.push(g);
        }
    }
    out
}

/// An answer with no group yet, stamped with the policy's minimum cell size.
pub fn empty_result(policy: &Policy) -> pb::PartialResult {
    pb::PartialResult {
        min_cell_size: policy.min_cell_size,
        profile: policy.profile.label().into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::partial_aggregate::State;

    fn count(n: u64) -> CandidateAggregate {
        CandidateAggregate::Plain(pb::PartialAggregate { state: Some(State::Count(pb::CountState { count: n })) })
    }

    fn key(s: &str) -> Vec<pb::Literal> {
        vec![pb::Literal { value: Some(pb::literal::Value::String(s.into())) }]
    }

    #[test]
    fn small_groups_release_nothing() {
        let policy = Policy::with_min_cell_size(5).unwrap();
        let groups = vec![
            CandidateGroup { keys: key("big"), patients: 12, aggregates: vec![count(40)] },
            CandidateGroup { keys: key("rare"), patients: 2, aggregates: vec![count(3)] },
        ];
        let out = release(&policy, groups);
        assert_eq!(out.withheld_groups, 1);
        assert_eq!(out.groups.len(), 1);
        assert_eq!(out.groups[0].keys, key("big"));
        // Nothing of the withheld group anywhere in the encoded answer.
        let debug = format!("{out:?}");
        assert!(!debug.contains("rare"));
        assert!(!debug.contains("count: 3"));
    }

    #[test]
    fn histogram_bins_are_checked_one_by_one() {
        let policy = Policy::with_min_cell_size(5).unwrap();
        let groups = vec![CandidateGroup {
            keys: vec![],
            patients: 30,
            aggregates: vec![CandidateAggregate::Histogram { counts: vec![10, 3, 0, 20], patients: vec![8, 2, 0, 15] }],
        }];
        let out = release(&policy, groups);
        let Some(State::Histogram(h)) = &out.groups[0].aggregates[0].state else { panic!("not a histogram") };
        assert_eq!(h.counts, vec![10, 0, 0, 20]);
        assert_eq!(h.withheld_bins, vec![1, 2], "the empty bin is withheld like the small one");
        assert_eq!(out.withheld_bins, 2);
    }

    #[test]
    fn empty_cells_look_like_small_ones() {
        let policy = Policy::with_min_cell_size(5).unwrap();
        let groups = vec![CandidateGroup {
            keys: vec![],
            patients: 30,
            aggregates: vec![CandidateAggregate::Histogram { counts: vec![10, 0, 3], patients: vec![8, 0, 2] }],
        }];
        let out = release(&policy, groups);
        let Some(State::Histogram(h)) = &out.groups[0].aggregates[0].state else { panic!("not a histogram") };
        assert_eq!(h.withheld_bins, vec![1, 2], "the empty bin is withheld like the small one");
        let empty = release(&policy, vec![CandidateGroup { keys: vec![], patients: 0, aggregates: vec![count(0)] }]);
        let small = release(&policy, vec![CandidateGroup { keys: vec![], patients: 2, aggregates: vec![count(2)] }]);
        assert_eq!(empty, small, "an empty global answer is the same as a small one");
    }

    #[test]
    fn a_value_with_too_few_contributors_is_withheld_in_a_big_group() {
        let policy = Policy::with_min_cell_size(5).unwrap();
        let sum = |n: u64, s: f64| pb::PartialAggregate {
            state: Some(State::Sum(pb::SumState { count: n, sum: Some(pb::sum_state::Sum::Float64(s)) })),
        };
        let groups = vec![CandidateGroup {
            keys: key("padded"),
            patients: 400,
            aggregates: vec![
                count(400),
                CandidateAggregate::Contributed { value: sum(1, 31.7), contributors: 1 },
                CandidateAggregate::Contributed { value: sum(0, 0.0), contributors: 0 },
                CandidateAggregate::Contributed { value: sum(9, 250.0), contributors: 9 },
            ],
        }];
        let out = release(&policy, groups);
        let aggs = &out.groups[0].aggregates;
        assert_eq!(aggs[1].state, Some(State::Withheld(pb::Withheld {})));
        assert_eq!(aggs[2], aggs[1], "no contributor looks like one contributor");
        assert_eq!(aggs[3], sum(9, 250.0));
        assert_eq!(out.withheld_values, 2);
        assert!(!format!("{out:?}").contains("31.7"));
    }

    #[test]
    fn k_one_releases_everything() {
        let policy = Policy::with_min_cell_size(1).unwrap();
        let groups = vec![CandidateGroup { keys: key("one"), patients: 1, aggregates: vec![count(1)] }];
        assert_eq!(release(&policy, groups).groups.len(), 1);
    }
}
