//! A site's design matrix, built from nullable columns the way R's `model.frame`/`model.matrix`
//! do it with `na.action = na.omit` and treatment contrasts.
//!
//! Layout: **column-major**. Column `j` is `x[j * n .. (j + 1) * n]`, contiguous, so the
//! contributions in `site.rs` run tight loops over contiguous memory.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use crate::error::DesignError;

/// Exponential family with its canonical link (the only links supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Identity link; fitted by [`crate::fit_linear`] from [`crate::Sufficient`].
    Gaussian,
    /// Logit link, outcome 0 or 1.
    Binomial,
    /// Log link, outcome a non-negative count.
    Poisson,
}

impl Family {
    /// R's name of the canonical link.
    pub fn link(self) -> &'static str {
        match self {
            Family::Gaussian => "identity",
            Family::Binomial => "logit",
            Family::Poisson => "log",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Gaussian => "gaussian",
            Family::Binomial => "binomial",
            Family::Poisson => "poisson",
        })
    }
}

/// What a design column stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Term {
    Intercept,
    Numeric {
        variable: String,
    },
    /// Dummy (treatment contrast): 1 where `variable == level`, else 0.
    Level {
        variable: String,
        level: String,
    },
}

/// Rows of one level of a categorical covariate, and the sum of the outcome over them
/// (for a binomial outcome: the events). Disclosure-relevant: small cells must be checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelCount {
    pub variable: String,
    pub level: String,
    pub rows: u64,
    pub sum_y: f64,
}

/// Outcome facts computed once per design, so that each IRLS round stays cheap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutcomeStats {
    pub sum_y: f64,
    pub yty: f64,
    /// Σ y ln y (0 ln 0 = 0); NaN if some y < 0.
    pub sum_ylogy: f64,
    /// Σ ln(y!); NaN unless every y is a non-negative integer.
    pub sum_lfact: f64,
    /// Rows whose y is not 0 or 1, and the first such value.
    pub not_binary: (usize, f64),
    /// Rows whose y is not a non-negative integer, and the first such value.
    pub not_count: (usize, f64),
}

enum Input {
    Numeric { name: String, values: Vec<Option<f64>> },
    Categorical { name: String, codes: Vec<Option<usize>>, levels: Vec<String> },
}

/// Builds a [`Design`] from nullable columns. Errors are kept and returned by [`Self::build`],
/// so calls can be chained.
pub struct DesignBuilder {
    intercept: bool,
    inputs: Vec<Input>,
    outcome: Option<Vec<Option<f64>>>,
    error: Option<DesignError>,
}

impl DesignBuilder {
    pub fn new(intercept: bool) -> Self {
        DesignBuilder { intercept, inputs: Vec::new(), outcome: None, error: None }
    }

    /// A numeric covariate; `None` and NaN are missing (the row is dropped).
    pub fn numeric(mut self, name: &str, values: &[Option<f64>]) -> Self {
        if self.error.is_none() && values.iter().flatten().any(|v| v.is_infinite()) {
            self.error = Some(DesignError::Infinite { what: format!("covariate {name:?}") });
        }
        let values = values.iter().map(|v| v.filter(|v| !v.is_nan())).collect();
        self.inputs.push(Input::Numeric { name: name.to_owned(), values });
        self
    }

    /// A categorical covariate, dummy-coded against `levels[0]` (the reference level, as R's
    /// treatment contrasts). A value not in `levels` is an error; `None` is missing.
    pub fn categorical(mut self, name: &str, values: &[Option<&str>], levels: &[String]) -> Self {
        let mut seen = HashSet::new();
        for level in levels {
            if !seen.insert(level.as_str()) && self.error.is_none() {
                self.error = Some(DesignError::DuplicateLevel { name: name.to_owned(), level: level.clone() });
            }
        }
        if levels.len() < 2 && self.error.is_none() {
            self.error = Some(DesignError::TooFewLevels { name: name.to_owned() });
        }
        let mut codes = Vec::with_capacity(values.len());
        for value in values {
            let code = match value {
                None => None,
                Some(v) => match levels.iter().position(|l| l == v) {
                    Some(i) => Some(i),
                    None => {
                        if self.error.is_none() {
                            self.error = Some(DesignError::UnknownLevel {
                                name: name.to_owned(),
                                value: (*v).to_owned(),
                                levels: levels.join(", "),
                            });
                        }
                        None
                    }
                },
            };
            codes.push(code);
        }
        self.inputs.push(Input::Categorical { name: name.to_owned(), codes, levels: levels.to_vec() });
        self
    }

    /// The outcome; `None` and NaN are missing.
    pub fn outcome(mut self, values: &[Option<f64>]) -> Self {
        if self.error.is_none() && values.iter().flatten().any(|v| v.is_infinite()) {
            self.error = Some(DesignError::Infinite { what: "the outcome".to_owned() });
        }
        self.outcome = Some(values.iter().map(|v| v.filter(|v| !v.is_nan())).collect());
        self
    }

    /// Drops incomplete rows (counted in `dropped`) and lays out the design matrix.
    pub fn build(self) -> Result<Design, DesignError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let outcome = self.outcome.ok_or(DesignError::NoOutcome)?;
        let rows = outcome.len();
        let mut complete: Vec<bool> = outcome.iter().map(Option::is_some).collect();
        for input in &self.inputs {
            let (name, len) = match input {
                Input::Numeric { name, values } => (name, values.len()),
                Input::Categorical { name, codes, .. } => (name, codes.len()),
            };
            if len != rows {
                return Err(DesignError::LengthMismatch {
                    what: format!("covariate {name:?}"),
                    got: len,
                    expected: rows,
                });
            }
            for (keep, i) in complete.iter_mut().zip(0..) {
                *keep &= match input {
                    Input::Numeric { values, .. } => values[i].is_some(),
                    Input::Categorical { codes, .. } => codes[i].is_some(),
                };
            }
        }
        let n = complete.iter().filter(|&&c| c).count();
        let dropped = rows - n;
        if n == 0 {
            return Err(DesignError::NoCompleteRows { dropped });
        }
        let y: Vec<f64> = outcome.iter().zip(&complete).filter_map(|(v, &c)| if c { *v } else { None }).collect();

        let mut names = Vec::new();
        let mut terms = Vec::new();
        let mut x = Vec::new();
        let mut levels_out = Vec::new();
        if self.intercept {
            names.push("(Intercept)".to_owned());
            terms.push(Term::Intercept);
            x.resize(n, 1.0);
        }
        for input in &self.inputs {
            match input {
                Input::Numeric { name, values } => {
                    names.push(name.clone());
                    terms.push(Term::Numeric { variable: name.clone() });
                    x.extend(values.iter().zip(&complete).filter_map(|(v, &c)| if c { *v } else { None }));
                }
                Input::Categorical { name, codes, levels } => {
                    let kept: Vec<usize> =
                        codes.iter().zip(&complete).filter_map(|(v, &c)| if c { *v } else { None }).collect();
                    for (k, level) in levels.iter().enumerate() {
                        let rows = kept.iter().filter(|&&c| c == k).count() as u64;
                        let sum_y = kept.iter().zip(&y).filter(|&(&c, _)| c == k).map(|(_, y)| y).sum();
                        levels_out.push(LevelCount { variable: name.clone(), level: level.clone(), rows, sum_y });
                        if k == 0 {
                            continue;
                        }
                        // R's name for a treatment-contrast column: variable and level pasted.
                        names.push(format!("{name}{level}"));
                        terms.push(Term::Level { variable: name.clone(), level: level.clone() });
                        x.extend(kept.iter().map(|&c| if c == k { 1.0 } else { 0.0 }));
                    }
                }
            }
        }
        if names.is_empty() {
            return Err(DesignError::NoColumns);
        }
        let mut unique = HashSet::new();
        if let Some(dup) = names.iter().find(|name| !unique.insert(name.as_str())) {
            return Err(DesignError::DuplicateName(dup.clone()));
        }
        let stats = outcome_stats(&y);
        Ok(Design { names, terms, n, dropped, intercept: self.intercept, levels: levels_out, x, y, stats })
    }
}

fn outcome_stats(y: &[f64]) -> OutcomeStats {
    let mut s = OutcomeStats {
        sum_y: 0.0,
        yty: 0.0,
        sum_ylogy: 0.0,
        sum_lfact: 0.0,
        not_binary: (0, 0.0),
        not_count: (0, 0.0),
    };
    for &v in y {
        s.sum_y += v;
        s.yty += v * v;
        s.sum_ylogy += if v > 0.0 {
            v * v.ln()
        } else if v == 0.0 {
            0.0
        } else {
            f64::NAN
        };
        if v != 0.0 && v != 1.0 {
            if s.not_binary.0 == 0 {
                s.not_binary.1 = v;
            }
            s.not_binary.0 += 1;
        }
        if v < 0.0 || v.fract() != 0.0 {
            if s.not_count.0 == 0 {
                s.not_count.1 = v;
            }
            s.not_count.0 += 1;
        } else {
            s.sum_lfact += statrs::function::gamma::ln_gamma(v + 1.0);
        }
    }
    if s.not_count.0 > 0 {
        s.sum_lfact = f64::NAN;
    }
    s
}

/// A site's complete cases: the design matrix (column-major, see the module doc) and outcome.
#[derive(Debug, Clone)]
pub struct Design {
    /// Column names as R's `model.matrix` spells them: `(Intercept)`, `age`, `sexmale`.
    pub names: Vec<String>,
    pub terms: Vec<Term>,
    /// Complete cases (rows used).
    pub n: usize,
    /// Rows dropped for a missing value in the outcome or a used covariate.
    pub dropped: usize,
    pub intercept: bool,
    /// Rows and outcome sums per level of every categorical covariate, the reference included.
    pub levels: Vec<LevelCount>,
    pub(crate) x: Vec<f64>,
    pub(crate) y: Vec<f64>,
    pub(crate) stats: OutcomeStats,
}

impl Design {
    /// Number of design columns.
    pub fn p(&self) -> usize {
        self.names.len()
    }

    /// Column `j` over the complete cases.
    pub fn column(&self, j: usize) -> &[f64] {
        &self.x[j * self.n..(j + 1) * self.n]
    }

    /// The outcome over the complete cases.
    pub fn outcome(&self) -> &[f64] {
        &self.y
    }

    /// Checks the outcome against the family: 0/1 for binomial, non-negative integers for Poisson.
    pub fn check_outcome(&self, family: Family) -> Result<(), DesignError> {
        let (bad, first, rule) = match family {
            Family::Gaussian => return Ok(()),
            Family::Binomial => (self.stats.not_binary.0, self.stats.not_binary.1, "must be 0 or 1"),
            Family::Poisson => {
                (self.stats.not_count.0, self.stats.not_count.1, "must be a non-negative whole number (a count)")
            }
        };
        if bad == 0 {
            return Ok(());
        }
        Err(DesignError::InvalidOutcome {
            family,
            problem: format!("it {rule}, but {bad} of {} complete cases are not (the first is {first})", self.n),
        })
    }
}
