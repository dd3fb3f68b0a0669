//! What node and coordinator must agree on beyond the wire format: how bins cut a value
//! range, how literals map to Arrow scalars and column types, and the DataFusion functions
//! (`bin`, `bin_edges`, `histogram`, `histogram_edges`, `moments`) that both sides plan and
//! execute with.

pub mod bins;
pub mod capped;
pub mod cohort;
pub mod functions;
pub mod literal;
pub mod model;
pub mod moments;
pub mod private;
pub mod validate;

pub use bins::BinSpec;
pub use moments::Moments;

/// Errors in a typed request or in the data a function sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidBins(String),
    #[error("{0}")]
    InvalidLiteral(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Upper bound on the number of bins in one binning, so that a request cannot make a node
/// build unbounded state.
pub const MAX_BINS: usize = 1000;
