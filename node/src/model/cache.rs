//! Designs kept between the rounds of a fit, and each fit's rounds (rule R8).
//!
//! * Designs by (project, SHA-256 of the encoded `ModelQuery`, data version): least recently
//!   used first out beyond `[regression] max_cached_designs_mb`, forgotten after
//!   `cache_seconds` idle, all of them when the catalogue is replaced. A miss rebuilds the same
//!   design (same data version, rows in patient-key order).
//! * Fits by `fit_id`: the model and data version of the attempt, and the coefficients of each
//!   round answered. Rounds come strictly in order per attempt, at most `max_rounds`; a round
//!   asked again is answered only for the same coefficients (bit for bit), which give the same
//!   numbers; attempts only go up, at most [`MAX_ATTEMPTS`]; new data during an attempt
//!   refuses its later rounds (the coordinator restarts with a new attempt). Fits are
//!   forgotten after an hour without a round, or the longest idle beyond [`MAX_FITS`].

use super::ModelError;
use super::design::Built;
use crate::refusal::Refusal;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use verbund_policies::ModelRefusal;
use verbund_proto::v1 as pb;

/// Attempts per fit: the first and up to three restarts after a site was lost (R8).
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// How long a fit's rounds are remembered without a new round. Longer than designs: a fit
/// forgotten can only start again at round 0 (R8 holds either way), and its state is small.
const FIT_IDLE: Duration = Duration::from_secs(3600);
/// Fits remembered at once; beyond, the longest idle is forgotten (its later rounds are then
/// refused as out of order, and the coordinator restarts).
const MAX_FITS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DesignKey {
    pub(crate) project: String,
    /// SHA-256 of the encoded `ModelQuery`.
    pub(crate) model: Vec<u8>,
    pub(crate) version: String,
}

struct Cached {
    built: Arc<Built>,
    bytes: usize,
    used: Instant,
}

struct Fit {
    project: String,
    model: Vec<u8>,
    version: String,
    attempt: u32,
    /// The coefficients of each round answered in this attempt, by round.
    rounds: Vec<Vec<u64>>,
    used: Instant,
}

#[derive(Default)]
struct State {
    designs: HashMap<DesignKey, Cached>,
    bytes: usize,
    fits: HashMap<String, Fit>,
}

#[derive(Default)]
pub(crate) struct ModelCache(parking_lot::Mutex<State>);

impl State {
    fn expire(&mut self, idle: Duration) {
        let before = self.designs.len();
        self.designs.retain(|_, c| c.used.elapsed() < idle);
        if self.designs.len() != before {
            self.bytes = self.designs.values().map(|c| c.bytes).sum();
        }
        self.fits.retain(|_, f| f.used.elapsed() < FIT_IDLE.max(idle));
    }
}

impl ModelCache {
    /// Forgets every design (the data they were built from is no longer served). Fits are
    /// kept, so that their next round says the data changed.
    pub(crate) fn clear(&self) {
        let mut state = self.0.lock();
        state.designs.clear();
        state.bytes = 0;
    }

    /// Designs held now.
    pub(crate) fn designs(&self) -> usize {
        self.0.lock().designs.len()
    }

    /// The cached design of `key`, if any, marked as used now.
    pub(crate) fn design(&self, key: &DesignKey, idle: Duration) -> Option<Arc<Built>> {
        let mut state = self.0.lock();
        state.expire(idle);
        let cached = state.designs.get_mut(key)?;
        cached.used = Instant::now();
        Some(cached.built.clone())
    }

    /// Keeps `built` for later rounds, dropping the least recently used designs beyond
    /// `limit` bytes; a design larger than `limit` alone is used once and not kept.
    pub(crate) fn keep(&self, key: DesignKey, built: Arc<Built>, limit: usize, idle: Duration) {
        let bytes = built.bytes();
        if bytes > limit || idle.is_zero() {
            return;
        }
        let mut state = self.0.lock();
        state.expire(idle);
        if let Some(old) = state.designs.remove(&key) {
            state.bytes -= old.bytes;
        }
        while state.bytes + bytes > limit {
            let Some(oldest) = state.designs.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) else { break };
            if let Some(old) = state.designs.remove(&oldest) {
                state.bytes -= old.bytes;
            }
        }
        state.bytes += bytes;
        state.designs.insert(key, Cached { built, bytes, used: Instant::now() });
    }

    /// Rule R8: admits the request's round of its fit, or refuses it, before anything is
    /// computed. An admitted round is on record with its coefficients even if it is refused
    /// later (by R1–R7), so that it cannot be asked again with others.
    pub(crate) fn admit_round(
        &self,
        key: &DesignKey,
        request: &pb::ModelRequest,
        max_rounds: u32,
        idle: Duration,
    ) -> Result<(), Refusal> {
        let (attempt, round) = (request.attempt, request.round);
        if attempt > MAX_ATTEMPTS {
            return Err(ModelRefusal::TooManyAttempts { max: MAX_ATTEMPTS }.into());
        }
        if round >= max_rounds {
            return Err(ModelRefusal::TooManyRounds { max: max_rounds }.into());
        }
        let beta: Vec<u64> = request.beta.iter().map(|b| b.to_bits()).collect();
        let mut state = self.0.lock();
        state.expire(idle);
        let fresh = || Fit {
            project: key.project.clone(),
            model: key.model.clone(),
            version: key.version.clone(),
            attempt,
            rounds: Vec::new(),
            used: Instant::now(),
        };
        if !state.fits.contains_key(&request.fit_id) && state.fits.len() >= MAX_FITS {
            let oldest = state.fits.iter().min_by_key(|(_, f)| f.used).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                state.fits.remove(&oldest);
            }
        }
        let fit = state.fits.entry(request.fit_id.clone()).or_insert_with(fresh);
        if fit.project != key.project || fit.model != key.model {
            return Err(ModelError::OtherModel { fit_id: request.fit_id.clone() }.into());
        }
        if attempt < fit.attempt {
            return Err(ModelRefusal::AttemptOutOfOrder { attempt }.into());
        }
        if attempt > fit.attempt {
            *fit = fresh();
        }
        fit.used = Instant::now();
        if fit.version != key.version {
            return Err(ModelRefusal::DataChanged.into());
        }
        let expected = fit.rounds.len() as u32;
        match fit.rounds.get(round as usize) {
            Some(asked) if *asked == beta => Ok(()),
            Some(_) => Err(ModelRefusal::RoundRepeated { round }.into()),
            None if round == expected => {
                fit.rounds.push(beta);
                Ok(())
            }
            None => Err(ModelRefusal::RoundOutOfOrder { round, expected }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verbund_policies::model::ModelFacts;
    use verbund_regression::DesignBuilder;

    fn built(rows: usize) -> Arc<Built> {
        let x: Vec<Option<f64>> = (0..rows).map(|i| Some(i as f64)).collect();
        let design = DesignBuilder::new(true).numeric("x", &x).outcome(&x).build().unwrap();
        let facts = ModelFacts::of(&design, pb::ModelFamily::Gaussian);
        Arc::new(Built { design, facts })
    }

    fn key(version: &str) -> DesignKey {
        DesignKey { project: "p".into(), model: vec![1], version: version.into() }
    }

    #[test]
    fn designs_beyond_the_bound_go_least_recently_used_first_and_idle_ones_expire() {
        let cache = ModelCache::default();
        let idle = Duration::from_secs(60);
        let one = built(100).bytes();
        for v in ["a", "b"] {
            cache.keep(key(v), built(100), 2 * one, idle);
        }
        assert!(cache.design(&key("a"), idle).is_some(), "a is now the most recently used");
        cache.keep(key("c"), built(100), 2 * one, idle);
        assert!(cache.design(&key("b"), idle).is_none(), "b was the least recently used");
        assert_eq!(cache.designs(), 2);
        cache.keep(key("big"), built(1000), 2 * one, idle);
        assert!(cache.design(&key("big"), idle).is_none(), "larger than the bound alone: not kept");
        assert!(cache.design(&key("a"), Duration::ZERO).is_none(), "idle past cache_seconds");
        assert_eq!(cache.designs(), 0);
    }
}
