//! Privacy cost in integer units, and a project's allowance per period.
//!
//! Costs are integers so that adding up thousands of queries is exact and a sum read back from
//! the file is the sum that was written: floating point would drift, and a drift below the
//! allowance would be an overspend nobody could see.

use crate::LedgerError;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Privacy cost in integer units, rounded UP by the caller: ε in millionths, δ in 1e-12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub epsilon_micro: u64,
    pub delta_pico: u64,
}

impl Cost {
    pub const ZERO: Cost = Cost { epsilon_micro: 0, delta_pico: 0 };

    pub fn epsilon(&self) -> f64 {
        self.epsilon_micro as f64 / 1e6
    }

    pub fn delta(&self) -> f64 {
        self.delta_pico as f64 / 1e12
    }

    /// The cost of a mechanism run with these ε and δ, rounded up to whole units, so the ledger
    /// never charges less than is spent. NaN, infinite, negative or too large values are refused.
    pub fn from_f64(epsilon: f64, delta: f64) -> Result<Cost, LedgerError> {
        Ok(Cost { epsilon_micro: units("ε", epsilon, 1e6)?, delta_pico: units("δ", delta, 1e12)? })
    }

    /// `None` on overflow: a sum that does not fit in u64 never fits in an allowance either.
    pub(crate) fn checked_add(self, other: Cost) -> Option<Cost> {
        Some(Cost {
            epsilon_micro: self.epsilon_micro.checked_add(other.epsilon_micro)?,
            delta_pico: self.delta_pico.checked_add(other.delta_pico)?,
        })
    }

    /// What is left of `self` after `spent`; 0, not a wrap, if an allowance was lowered below
    /// what had already been spent.
    pub(crate) fn saturating_sub(self, spent: Cost) -> Cost {
        Cost {
            epsilon_micro: self.epsilon_micro.saturating_sub(spent.epsilon_micro),
            delta_pico: self.delta_pico.saturating_sub(spent.delta_pico),
        }
    }

    /// Both ε and δ are within `limit`.
    pub(crate) fn within(self, limit: Cost) -> bool {
        self.epsilon_micro <= limit.epsilon_micro && self.delta_pico <= limit.delta_pico
    }

    /// ε as an exact decimal ("1.0", "0.000125"): the units, not a float's rounding of them.
    pub fn epsilon_text(&self) -> String {
        decimal(self.epsilon_micro, 6)
    }

    pub fn delta_text(&self) -> String {
        decimal(self.delta_pico, 12)
    }
}

/// "ε 1.0", or "ε 1.0 and δ 0.000001" when there is a δ.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ε {}", self.epsilon_text())?;
        if self.delta_pico > 0 {
            write!(f, " and δ {}", self.delta_text())?;
        }
        Ok(())
    }
}

fn units(name: &str, value: f64, scale: f64) -> Result<u64, LedgerError> {
    if !value.is_finite() || value < 0.0 {
        return Err(LedgerError::InvalidCost(format!("{name} must be a finite number of at least 0, not {value}")));
    }
    let scaled = value * scale;
    // Most decimal fractions are not exact in binary: 0.1 is 0.1000000000000000055… and
    // 0.1 * 1e6 is 100000.00000000001. Rounding that up would charge ε 0.1 as 0.100001, and ten
    // queries of ε 0.1 would not fit in ε 1.0. So a value within a billionth (relative) of a whole
    // unit is that unit — far below any meaningful privacy difference — and all else rounds up.
    let nearest = scaled.round();
    let whole = if (scaled - nearest).abs() <= scaled.max(1.0) * 1e-9 { nearest } else { scaled.ceil() };
    // 2^64 is the first f64 that does not fit in a u64 (u64::MAX itself rounds up to it).
    if whole >= 18_446_744_073_709_551_616.0 {
        return Err(LedgerError::InvalidCost(format!("{name} {value} is too large to account for")));
    }
    Ok(whole as u64)
}

fn decimal(units: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let (whole, fraction) = (units / scale, units % scale);
    if fraction == 0 {
        return format!("{whole}.0");
    }
    let fraction = format!("{fraction:0width$}", width = digits as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A project's allowance per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub per_period: Cost,
    pub period: Duration,
}

/// The period that `now` falls in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Start of the period in whole seconds since 1970: the ledger's key for a period. It names
    /// the period by its start, not by its index, so that an operator who changes the period
    /// length never finds the spending of an unrelated period under the same key.
    pub start: u64,
    pub renews_at: SystemTime,
}

impl Window {
    /// period_index = floor((now - UNIX_EPOCH) / period); renews_at = UNIX_EPOCH + (index+1)*period.
    pub(crate) fn of(period: Duration, now: SystemTime) -> Result<Window, LedgerError> {
        let period_secs = period.as_secs();
        if period_secs == 0 || period.subsec_nanos() != 0 {
            return Err(LedgerError::InvalidAllowance(format!(
                "the budget period must be a whole number of seconds, at least one; it is {period:?}"
            )));
        }
        let since = now.duration_since(UNIX_EPOCH).map_err(|_| clock(now))?.as_secs();
        let index = since / period_secs;
        let start = index.checked_mul(period_secs).ok_or_else(|| clock(now))?;
        let end = start.checked_add(period_secs).ok_or_else(|| clock(now))?;
        let renews_at = UNIX_EPOCH.checked_add(Duration::from_secs(end)).ok_or_else(|| clock(now))?;
        Ok(Window { start, renews_at })
    }
}

fn clock(now: SystemTime) -> LedgerError {
    LedgerError::Clock(format!(
        "the clock reads {now:?}, outside the range the ledger accounts for (1970 to the far future); fix the system clock"
    ))
}

/// "30 days", "1 day", "12 hours", "90 seconds".
pub(crate) fn period_text(period: Duration) -> String {
    let secs = period.as_secs();
    let (n, unit) = match secs {
        s if s > 0 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s > 0 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s > 0 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") }
}
