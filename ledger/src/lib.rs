//! The durable privacy-budget ledger each verbund node keeps.
//!
//! Every differentially private answer a node releases costs privacy budget (ε and δ) of the
//! project that asked. The budget is per project and per period (say 30 days), and renews at
//! period boundaries: the period that `now` falls in is `floor((now - 1970) / period)`, and it
//! renews at `1970 + (index + 1) * period`. A site's budget is its own: the ledger knows nothing
//! of other sites.
//!
//! ```no_run
//! # fn example(answer: impl FnOnce()) -> Result<(), verbund_ledger::LedgerError> {
//! use std::time::{Duration, SystemTime};
//! use verbund_ledger::{Allowance, Cost, Debit, Ledger};
//! let ledger = Ledger::open("/var/lib/verbund/budget.redb".as_ref())?;
//! let allowance = Allowance { per_period: Cost::from_f64(10.0, 1e-5)?, period: Duration::from_secs(30 * 86_400) };
//! let digest = [0u8; 32]; // a digest of the request as it will be answered
//! match ledger.debit("p1", &digest, Cost::from_f64(0.5, 0.0)?, &allowance, SystemTime::now())? {
//!     Debit::Charged { .. } | Debit::Repeat { .. } => answer(), // only now may the answer leave
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - **Debit before release.** [`Ledger::debit`] checks and charges in one redb write
//!   transaction and returns [`Debit::Charged`] only after the commit is on disk (immediate
//!   durability, two-phase commit). The caller releases an answer only after that. Debits run one
//!   at a time, so concurrent queries can never together spend more than the allowance: the
//!   check and the charge cannot be separated by another debit (`tests/race.rs`).
//! - **Refusal writes nothing.** A query the period's allowance cannot pay for (ε or δ) gets
//!   [`Exhausted`], which says what is left and when the budget renews; the ledger is unchanged.
//! - **A repeat is charged once.** A request whose 32-byte digest was charged before, in any
//!   period, is [`Debit::Repeat`] and costs nothing. That is sound only if the node answers a
//!   repeat with the very answer it released before (stored, or the same noise on the same
//!   data): a fresh noisy answer to the same request is a new release and must be charged, so
//!   the digest must then differ (e.g. cover a nonce).
//! - **Crashes.** An acknowledged debit is never lost: once `debit` has returned `Charged`, the
//!   charge survives a crash or power loss at any later moment. A crash during a debit either
//!   keeps it whole or drops it whole, never half of it, and the file opens again afterwards
//!   (`tests/crash.rs` kills a writer at random points). So a crash may lose an answer — charged
//!   but never sent — but never a debit. A retry of that request is then a `Repeat`.
//! - **Never trusts its file blindly.** Every page's checksum is verified on open; a damaged
//!   file is refused with [`LedgerError::Corrupt`] (restore it from backup, never delete it: an
//!   empty ledger would grant every project its budget again). Arithmetic on stored values is
//!   checked or saturating, never wrapping or panicking.
//!
//! Costs are integers ([`Cost`]: ε in millionths, δ in 1e-12), rounded up from the mechanism's
//! parameters, so sums are exact and a sum read back is the sum written.
//!
//! The API is blocking (each debit waits for fsync); call it from `tokio::task::spawn_blocking`.

mod cost;
mod error;
mod ledger;

pub use cost::{Allowance, Cost};
pub use error::{Exhausted, LedgerError};
pub use ledger::{Debit, Ledger, Remaining};

#[cfg(test)]
mod tests;
