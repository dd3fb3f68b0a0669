//! Output disclosure control: the single gate between a node's computed aggregates and the
//! wire. Everything a node answers is built by [`release`]; a withheld cell contributes
//! nothing but the count of withheld cells.

use crate::Policy;
use verbund_proto::v1 as pb;

/// One aggregate as computed, before the policy has seen it.
#[derive(Debug, Clone, PartialEq)]
pub enum CandidateAggregate {
    /// A partial aggregate released as a whole with its group.
    Plain(pb::PartialAggregate),
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

/// Applies the policy to computed groups and builds what may leave the node.
pub fn release(policy: &Policy, groups: Vec<CandidateGroup>) -> pb::PartialResult {
    let mut out = pb::PartialResult { min_cell_size: policy.min_cell_size, ..Default::default() };
    for group in groups {
        if !policy.releasable(group.patients) {
            out.withheld_groups += 1;
            continue;
        }
        let aggregates = group
            .aggregates
            .into_iter()
            .map(|agg| match agg {
                CandidateAggregate::Plain(p) => p,
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
                        state: Some(pb::partial_aggregate::State::Histogram(pb::HistogramState {
                            counts,
                            withheld_bins,
                        })),
                    }
                }
            })
            .collect();
        out.groups.push(pb::GroupPartial { keys: group.keys, aggregates });
    }
    out
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
        assert_eq!(h.withheld_bins, vec![1]);
        assert_eq!(out.withheld_bins, 1);
    }

    #[test]
    fn k_one_releases_everything() {
        let policy = Policy::with_min_cell_size(1).unwrap();
        let groups = vec![CandidateGroup { keys: key("one"), patients: 1, aggregates: vec![count(1)] }];
        assert_eq!(release(&policy, groups).groups.len(), 1);
    }
}
