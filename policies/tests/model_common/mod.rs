//! Designs, policies and candidates shared by the model tests.
#![allow(dead_code)]

use verbund_policies::model::{CandidateModel, CandidateNumbers};
use verbund_policies::{Policy, Profile};
use verbund_regression::{Design, DesignBuilder, Family};

pub fn raw() -> Policy {
    Policy { profile: Profile::TestOnlyRaw, i_understand_this_releases_raw_numbers: true, ..Policy::default() }
}

/// (age, sex, region, y) rows; sex levels female, male; region levels as given.
pub fn design(rows: &[(f64, &str, &str, f64)], regions: &[&str], family: Family) -> Design {
    let age: Vec<Option<f64>> = rows.iter().map(|r| Some(r.0)).collect();
    let sex: Vec<Option<&str>> = rows.iter().map(|r| Some(r.1)).collect();
    let region: Vec<Option<&str>> = rows.iter().map(|r| Some(r.2)).collect();
    let y: Vec<Option<f64>> = rows.iter().map(|r| Some(r.3)).collect();
    let levels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let d = DesignBuilder::new(true)
        .numeric("age", &age)
        .categorical("sex", &sex, &levels(&["female", "male"]))
        .categorical("region", &region, &levels(regions))
        .outcome(&y)
        .build()
        .expect("design");
    d.check_outcome(family).expect("outcome");
    d
}

pub const REGIONS: [&str; 3] = ["north", "south", "east"];

/// 60 patients passing every rule under k = 5: distinct ages 20..79, sexes and regions evenly
/// crossed (10 per pair), outcome linear in age or 0/1 for about 3 in 7 of them.
pub fn baseline(family: Family) -> Vec<(f64, &'static str, &'static str, f64)> {
    (0..60)
        .map(|i| {
            let age = 20.0 + ((i * 7) % 60) as f64;
            let y = match family {
                Family::Gaussian => 20.0 + 0.1 * age + ((i * 13) % 7) as f64,
                _ => f64::from(u8::from((i * 5) % 7 < 3)),
            };
            (age, ["female", "male"][i % 2], REGIONS[i % 3], y)
        })
        .collect()
}

pub fn baseline_design(family: Family) -> Design {
    design(&baseline(family), &REGIONS, family)
}

/// A candidate answering attempt 2, round 3, summed over `sites` sites.
pub fn candidate(numbers: CandidateNumbers, sites: u32) -> CandidateModel {
    CandidateModel { attempt: 2, round: 3, sites, numbers }
}

pub fn contribution(d: &Design, beta: Option<&[f64]>, sites: u32) -> CandidateModel {
    let c = d.contribution(Family::Binomial, beta).expect("contribution");
    candidate(CandidateNumbers::Contribution(c), sites)
}

/// Index of (j, k), j ≤ k, in an upper triangle stored row by row.
pub fn upper(p: usize, j: usize, k: usize) -> usize {
    j * p - j * (j.saturating_sub(1)) / 2 + (k - j)
}
