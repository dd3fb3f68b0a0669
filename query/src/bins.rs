//! Numeric bins: fixed width with bounds, or explicit edges. Bins are half-open
//! `[lower, upper)`; a value outside all bins has no bin.

use crate::{Error, MAX_BINS, Result};
use verbund_proto::v1 as pb;

#[derive(Debug, Clone, PartialEq)]
pub enum BinSpec {
    Fixed { start: f64, width: f64, count: usize },
    Edges(Vec<f64>),
}

impl BinSpec {
    /// Checks a bin specification: finite numbers, positive width, 1..=MAX_BINS bins,
    /// strictly increasing edges.
    pub fn fixed(start: f64, width: f64, count: usize) -> Result<Self> {
        if !start.is_finite() || !width.is_finite() {
            return Err(Error::InvalidBins("bin start and width must be finite numbers".into()));
        }
        if width <= 0.0 {
            return Err(Error::InvalidBins(format!("bin width must be positive, got {width}")));
        }
        if count == 0 || count > MAX_BINS {
            return Err(Error::InvalidBins(format!("number of bins must be between 1 and {MAX_BINS}, got {count}")));
        }
        if !(start + width * count as f64).is_finite() {
            return Err(Error::InvalidBins("bins extend beyond the range of numbers".into()));
        }
        Ok(Self::Fixed { start, width, count })
    }

    pub fn edges(edges: Vec<f64>) -> Result<Self> {
        if edges.len() < 2 || edges.len() > MAX_BINS + 1 {
            return Err(Error::InvalidBins(format!(
                "bin edges need between 2 and {} values, got {}",
                MAX_BINS + 1,
                edges.len()
            )));
        }
        if edges.iter().any(|e| !e.is_finite()) {
            return Err(Error::InvalidBins("bin edges must be finite numbers".into()));
        }
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidBins("bin edges must be strictly increasing".into()));
        }
        Ok(Self::Edges(edges))
    }

    pub fn from_proto(bins: &pb::Bins) -> Result<Self> {
        match &bins.spec {
            Some(pb::bins::Spec::Fixed(f)) => Self::fixed(f.start, f.width, f.count as usize),
            Some(pb::bins::Spec::Edges(e)) => Self::edges(e.edges.clone()),
            None => Err(Error::InvalidBins(format!(
                "bins on column '{}' have neither a fixed width nor edges",
                bins.column
            ))),
        }
    }

    pub fn to_proto(&self, column: &str) -> pb::Bins {
        let spec = match self {
            Self::Fixed { start, width, count } => {
                pb::bins::Spec::Fixed(pb::FixedWidthBins { start: *start, width: *width, count: *count as u32 })
            }
            Self::Edges(edges) => pb::bins::Spec::Edges(pb::ExplicitEdges { edges: edges.clone() }),
        };
        pb::Bins { column: column.to_string(), spec: Some(spec) }
    }

    /// Number of bins.
    pub fn len(&self) -> usize {
        match self {
            Self::Fixed { count, .. } => *count,
            Self::Edges(edges) => edges.len() - 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the bin holding `x`, if any. NaN has no bin.
    pub fn index_of(&self, x: f64) -> Option<usize> {
        match self {
            Self::Fixed { start, width, count } => {
                let i = ((x - start) / width).floor();
                // `i >= 0.0` is false for NaN, so NaN falls through to None.
                (i >= 0.0 && i < *count as f64).then_some(i as usize)
            }
            Self::Edges(edges) => {
                if !(x >= edges[0] && x < edges[edges.len() - 1]) {
                    return None;
                }
                // First edge greater than x, minus one.
                Some(edges.partition_point(|e| *e <= x) - 1)
            }
        }
    }

    /// Lower edge of bin `i`: the group key of a binned value.
    pub fn lower_edge(&self, i: usize) -> f64 {
        match self {
            Self::Fixed { start, width, .. } => start + width * i as f64,
            Self::Edges(edges) => edges[i],
        }
    }

    /// The bin key of `x` (its bin's lower edge), `None` outside all bins.
    pub fn key_of(&self, x: f64) -> Option<f64> {
        self.index_of(x).map(|i| self.lower_edge(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bins_are_half_open_and_bounded() {
        let b = BinSpec::fixed(0.0, 10.0, 3).unwrap();
        assert_eq!(b.index_of(0.0), Some(0));
        assert_eq!(b.index_of(9.999), Some(0));
        assert_eq!(b.index_of(10.0), Some(1));
        assert_eq!(b.index_of(29.9), Some(2));
        assert_eq!(b.index_of(30.0), None);
        assert_eq!(b.index_of(-0.1), None);
        assert_eq!(b.index_of(f64::NAN), None);
        assert_eq!(b.key_of(25.0), Some(20.0));
    }

    #[test]
    fn edge_bins_find_their_interval() {
        let b = BinSpec::edges(vec![0.0, 18.0, 65.0, 120.0]).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.index_of(17.0), Some(0));
        assert_eq!(b.index_of(18.0), Some(1));
        assert_eq!(b.index_of(64.9), Some(1));
        assert_eq!(b.index_of(65.0), Some(2));
        assert_eq!(b.index_of(120.0), None);
        assert_eq!(b.key_of(70.0), Some(65.0));
    }

    #[test]
    fn malformed_bins_are_refused() {
        assert!(BinSpec::fixed(0.0, 0.0, 3).is_err());
        assert!(BinSpec::fixed(0.0, -1.0, 3).is_err());
        assert!(BinSpec::fixed(0.0, 1.0, 0).is_err());
        assert!(BinSpec::fixed(0.0, 1.0, MAX_BINS + 1).is_err());
        assert!(BinSpec::fixed(f64::NAN, 1.0, 3).is_err());
        assert!(BinSpec::edges(vec![1.0]).is_err());
        assert!(BinSpec::edges(vec![1.0, 1.0]).is_err());
        assert!(BinSpec::edges(vec![2.0, 1.0]).is_err());
        assert!(BinSpec::edges(vec![0.0, f64::INFINITY]).is_err());
        let none = pb::Bins { column: "age".into(), spec: None };
        assert!(BinSpec::from_proto(&none).is_err());
    }
}
