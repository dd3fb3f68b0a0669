//! The crate's errors. Each message says what is wrong and what to do about it.

use crate::cost::{Allowance, Cost, period_text};
use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A query was refused because the project's budget for this period cannot pay for it. Nothing
/// was written: the ledger is as it was before the request.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Exhausted {
    pub project: String,
    pub cost: Cost,
    pub left: Cost,
    pub allowance: Allowance,
    pub renews_at: SystemTime,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cost, left, of) = (self.cost, self.left, self.allowance.per_period);
        write!(f, "the privacy budget of project '{}' at this site is spent: this query costs {cost}, ", self.project)?;
        write!(f, "ε {} of {}", left.epsilon_text(), of.epsilon_text())?;
        // δ is mentioned where it matters: the query spends some, or the project has some.
        if cost.delta_pico > 0 || of.delta_pico > 0 {
            write!(f, " and δ {} of {} are", left.delta_text(), of.delta_text())?;
        } else {
            write!(f, " is")?;
        }
        write!(
            f,
            " left until {} (the budget renews every {})",
            rfc3339(self.renews_at),
            period_text(self.allowance.period)
        )
    }
}

fn rfc3339(at: SystemTime) -> String {
    let formatted = time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339);
    // Rfc3339 cannot format years past 9999; the seconds still say when.
    formatted.unwrap_or_else(|_| match at.duration_since(UNIX_EPOCH) {
        Ok(since) => format!("{} seconds after 1970", since.as_secs()),
        Err(_) => format!("{at:?}"),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    #[error("cannot open the privacy-budget ledger {path}: {source}; {hint}")]
    Open {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the privacy-budget ledger {path} is damaged: {detail}. No query can be charged, so none may be answered: restore it from backup; never delete it, because it holds what was already spent (a new, empty ledger would grant every project its budget again)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the privacy-budget ledger {path} has format {found}, and this build knows format {known}; run the verbund version that wrote it (never delete the file: it holds what was already spent)"
    )]
    UnknownFormat { path: PathBuf, found: u64, known: u64 },
    /// Reading or writing failed. A debit that failed this way must be treated as not paid for:
    /// the answer may not be released.
    #[error(
        "cannot read or write the privacy-budget ledger: {0}; release no answer that depends on it, fix the cause (free disk space, permissions, disk errors) and restart the node to reopen the ledger"
    )]
    Storage(String),
    #[error("invalid privacy cost: {0}")]
    InvalidCost(String),
    #[error("invalid privacy allowance: {0}; check the project's budget configuration")]
    InvalidAllowance(String),
    #[error("{0}")]
    Clock(String),
}
