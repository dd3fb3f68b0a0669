//! [`ModelFacts`] of a site's design: computed once per design over its complete cases, so
//! that each round's check is cheap. Modes are counted by the values' bits, levels and
//! crossings from the dummy columns.

use crate::model::{CategoricalFacts, CrossingFacts, LevelFacts, ModelFacts};
use std::collections::HashMap;
use verbund_proto::v1 as pb;
use verbund_regression::{Design, Term};

impl ModelFacts {
    /// The facts of `design` (one row per patient) for a model of `family`.
    pub fn of(design: &Design, family: pb::ModelFamily) -> ModelFacts {
        let n = design.n;
        let y = design.outcome();
        let is_event = |v: f64| v == 1.0;

        // Each categorical covariate's level per row (0: the reference), from its dummies.
        let mut categorical: Vec<CategoricalFacts> = Vec::new();
        let mut codes: Vec<Vec<usize>> = Vec::new();
        for l in &design.levels {
            if categorical.last().is_none_or(|c| c.column != l.variable) {
                categorical.push(CategoricalFacts { column: l.variable.clone(), levels: Vec::new() });
                codes.push(vec![0; n]);
            }
            if let Some(c) = categorical.last_mut() {
                c.levels.push(LevelFacts { level: l.level.clone(), patients: 0, events: 0 });
            }
        }
        let mut numeric = Vec::new();
        for (j, term) in design.terms.iter().enumerate() {
            match term {
                Term::Intercept => {}
                Term::Numeric { variable } => numeric.push((variable.clone(), off_mode(design.column(j)))),
                Term::Level { variable, level } => {
                    let Some(v) = categorical.iter().position(|c| &c.column == variable) else { continue };
                    let Some(li) = categorical[v].levels.iter().position(|l| &l.level == level) else { continue };
                    for (code, &x) in codes[v].iter_mut().zip(design.column(j)) {
                        if x != 0.0 {
                            *code = li;
                        }
                    }
                }
            }
        }
        for (c, codes) in categorical.iter_mut().zip(&codes) {
            for (&code, &yi) in codes.iter().zip(y) {
                if let Some(l) = c.levels.get_mut(code) {
                    l.patients += 1;
                    l.events += u64::from(is_event(yi));
                }
            }
        }
        let mut crossings = Vec::new();
        for a in 0..categorical.len() {
            for b in a + 1..categorical.len() {
                let width = categorical[b].levels.len();
                let mut patients = vec![0u64; categorical[a].levels.len() * width];
                for (&ca, &cb) in codes[a].iter().zip(&codes[b]) {
                    if let Some(cell) = patients.get_mut(ca * width + cb) {
                        *cell += 1;
                    }
                }
                crossings.push(CrossingFacts { first: a, second: b, patients });
            }
        }
        ModelFacts {
            family,
            n: n as u64,
            columns: design.names.clone(),
            events: y.iter().filter(|&&v| is_event(v)).count() as u64,
            outcome_off_mode: off_mode(y),
            numeric,
            categorical,
            crossings,
        }
    }
}

/// Values that are not the most common value (-0 and 0 are one value).
fn off_mode(values: &[f64]) -> u64 {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for &v in values {
        *counts.entry((v + 0.0).to_bits()).or_default() += 1;
    }
    let mode = counts.values().copied().max().unwrap_or(0);
    values.len() as u64 - mode
}
