//! Errors, worded for the analyst who will read them (not for the programmer).

use crate::Family;

/// A problem with a site's rows or with the model specification, found before any fitting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesignError {
    #[error(
        "{what} has {got} values but the outcome and the other columns have {expected}: every column needs one value per row"
    )]
    LengthMismatch { what: String, got: usize, expected: usize },
    #[error("no outcome was given")]
    NoOutcome,
    #[error("the model has no columns: add an intercept or a covariate")]
    NoColumns,
    #[error("two design columns are both named {0:?}: covariate names must be unique")]
    DuplicateName(String),
    #[error("categorical covariate {name:?} has the value {value:?}, which is not one of its levels [{levels}]")]
    UnknownLevel { name: String, value: String, levels: String },
    #[error("categorical covariate {name:?} lists the level {level:?} twice")]
    DuplicateLevel { name: String, level: String },
    #[error("categorical covariate {name:?} needs at least two levels (the first is the reference level)")]
    TooFewLevels { name: String },
    #[error("{what} has an infinite value: only finite numbers or missing values are allowed")]
    Infinite { what: String },
    #[error("no complete cases: all {dropped} rows have a missing value in the outcome or a covariate")]
    NoCompleteRows { dropped: usize },
    #[error("the outcome is not valid for the {family} family: {problem}")]
    InvalidOutcome { family: Family, problem: String },
    #[error("{got} coefficients were given but the design has {expected} columns")]
    CoefficientCount { got: usize, expected: usize },
    #[error("a coefficient is not a finite number: {0}")]
    NonFiniteCoefficient(f64),
}

/// Why the coordinator could not produce a fit from the pooled statistics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("the site statistics do not fit together: {0}")]
    Mismatch(String),
    #[error("no site statistics to combine")]
    Empty,
    #[error(
        "the design is singular: {} {} a linear combination of the columns before {} (R's lm would report NA for {}); drop {} or merge sparse levels",
        list(aliased),
        if aliased.len() == 1 { "is" } else { "are" },
        if aliased.len() == 1 { "it" } else { "them" },
        if aliased.len() == 1 { "it" } else { "them" },
        if aliased.len() == 1 { "it" } else { "them" }
    )]
    Singular { aliased: Vec<String> },
    #[error(
        "{residual_df} residual degrees of freedom: there are {n} complete cases for {p} coefficients, so no standard errors can be estimated"
    )]
    NoResidualDf { n: u64, p: usize, residual_df: i64 },
    #[error(
        "separation: the binomial outcome is predicted perfectly (fitted probabilities numerically 0 or 1), so the maximum-likelihood estimate of {} does not exist (the coefficient diverges); {detail}",
        list(covariates)
    )]
    Separation { covariates: Vec<String>, detail: String },
    #[error(
        "IRLS did not converge in {iterations} iterations: the last relative change in deviance was {change:.3e} (needs < 1e-8); raise max_iterations or check the model"
    )]
    NonConvergence { iterations: usize, change: f64 },
    #[error("the {family} family is fitted by fit_linear from sufficient statistics, not by IRLS")]
    Unsupported { family: Family },
    #[error(
        "the residual sum of squares is negative (y'y − β'X'y = {rss:.6e}): the statistics' noise exceeds the residual variation, so no standard error, test or interval can be given"
    )]
    NegativeResidual { rss: f64 },
    #[error("a pooled statistic is not a finite number ({0}); the coefficients may have overflowed")]
    NonFinite(&'static str),
    #[error("the sites answered for coefficients that the coordinator did not send (round {round})")]
    StaleRound { round: usize },
    #[error("the fit is already done; start a new Irls for a new model")]
    Finished,
}

fn list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}
