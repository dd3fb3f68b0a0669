//! Federated generalised linear models as pure maths: plain `f64` slices in, plain structs out.
//!
//! * Sites build a [`Design`] from their rows ([`DesignBuilder`]) and return either the linear
//!   model's [`Sufficient`] statistics (one round) or one IRLS round's [`Contribution`].
//! * The coordinator sums them ([`Sufficient::sum`], [`Contribution::sum`]) and fits:
//!   [`fit_linear`] in one step, or binomial/Poisson GLMs with the [`Irls`] state machine.
//! * Under differential privacy a site releases a noisy Z'Z instead; the coordinator turns it
//!   into the site's [`Sufficient`] with [`sufficient_from_noisy`].
//! * Fits print like R's `summary(lm)` / `summary(glm)` and serialise to JSON.
//!
//! See docs/regression.md for the maths, the convergence rule and what is disclosure-relevant.

mod design;
mod error;
mod fit;
mod irls;
mod noisy;
mod site;
mod summary;

pub use design::{Design, DesignBuilder, Family, LevelCount, Term};
pub use error::{DesignError, FitError};
pub use fit::{Coefficient, FStatistic, LinearFit, fit_linear};
pub use irls::{EPSILON, GlmFit, Irls, MAX_ITERATIONS, Step};
pub use noisy::sufficient_from_noisy;
pub use site::{Contribution, Sufficient, WeightSupport};
