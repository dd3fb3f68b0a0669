//! Noise that is exact and deterministic per request.
//!
//! The sampler is prio's discrete Laplace (Canonne, Kamath, Steinke 2020): exact arithmetic
//! on rationals, so none of the floating-point attacks on textbook Laplace noise apply. It
//! is driven by ChaCha20 seeded with a keyed hash (HMAC-SHA256 under the node's secret noise
//! key) of the request, the data version and the mechanism. Asking the same question again
//! returns the same numbers, so repeating it cannot average the noise away; two different
//! questions with equal true answers get unrelated noise, so nothing tells that they are
//! equal (unlike caching noise per true count).

use aws_lc_rs::hmac;
use prio::dp::Rational;
use prio::dp::distributions::DiscreteLaplace;
use rand::distr::Distribution;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The node's secret for noise. Whoever knows it and the data can subtract the noise, so it
/// is kept like a private key (mode 0600, never sent anywhere).
#[derive(Clone)]
pub struct NoiseKey(hmac::Key);

impl std::fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseKey(..)")
    }
}

pub const NOISE_KEY_LEN: usize = 32;

impl NoiseKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != NOISE_KEY_LEN {
            return Err(format!("a noise key has {NOISE_KEY_LEN} bytes, this one has {}", bytes.len()));
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err("the noise key is all zeros; generate a random one".into());
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }
}

/// What the noise of one answer is derived from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

fn framed(ctx: &mut hmac::Context, part: &[u8]) {
    ctx.update(&(part.len() as u64).to_be_bytes());
    ctx.update(part);
}

impl Seed {
    /// The seed of one request: `request` is its canonical encoding, `data_version` names the
    /// data it runs on, `mechanism` digests everything that shapes the noise (profile,
    /// settings, bounds).
    pub fn for_request(key: &NoiseKey, request: &[u8], data_version: &str, mechanism: &[u8]) -> Self {
        let mut ctx = hmac::Context::with_key(&key.0);
        for part in [b"verbund/dp/v1".as_slice(), request, data_version.as_bytes(), mechanism] {
            framed(&mut ctx, part);
        }
        let mut seed = [0; 32];
        seed.copy_from_slice(ctx.sign().as_ref());
        Self(seed)
    }

    /// A digest that identifies the request in the budget ledger (not the seed itself).
    pub fn ledger_digest(&self) -> [u8; 32] {
        self.derive(b"verbund/ledger/v1", &[])
    }

    fn derive(&self, domain: &[u8], part: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        framed(&mut ctx, domain);
        framed(&mut ctx, part);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The noise source of one cell (its encoded group key): independent of the order in
    /// which cells come out of the query engine.
    pub fn cell(&self, cell: &[u8]) -> CellNoise {
        CellNoise(ChaCha20Rng::from_seed(self.derive(b"verbund/dp/cell", cell)))
    }
}

/// The scale `t` of discrete Laplace noise, P(Z = z) ∝ exp(-|z| / t), as an exact fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    numerator: u128,
    denominator: u128,
}

impl Scale {
    /// The scale for `parts` numbers per cell sharing ε (in millionths) when one patient can
    /// change them by `sensitivity` units (L1, over all cells): t = Δ · parts / ε.
    pub fn laplace(sensitivity: u64, parts: u32, epsilon_micro: u64) -> Self {
        let numerator = u128::from(sensitivity.max(1)) * u128::from(parts.max(1)) * 1_000_000;
        Self { numerator, denominator: u128::from(epsilon_micro.max(1)) }
    }

    pub fn as_f64(&self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }

    /// The smallest z with P(Z ≥ z) ≤ δ: P(Z ≥ z) = p^z / (1 + p) with p = exp(-1/t) for z ≥ 1.
    /// Rounded up, plus one, so that floating point can only make it safer.
    pub fn tail(&self, delta: f64) -> u64 {
        let t = self.as_f64();
        let p = (-1.0 / t).exp();
        let z = t * (1.0 / (delta * (1.0 + p))).ln();
        if z.is_finite() && z > 0.0 { z.ceil() as u64 + 1 } else { 1 }
    }

    /// The variance of the noise, 2p / (1 - p)².
    pub fn variance(&self) -> f64 {
        let p = (-1.0 / self.as_f64()).exp();
        2.0 * p / ((1.0 - p) * (1.0 - p))
    }
}

/// The noise of one cell: draw its numbers in a fixed order.
pub struct CellNoise(ChaCha20Rng);

impl CellNoise {
    /// One discrete Laplace sample at `scale`. A sample beyond ±2^62 (probability below
    /// exp(-2^62 / t)) is refused rather than wrapped.
    pub fn laplace(&mut self, scale: Scale) -> Result<i64, String> {
        let rational =
            Rational::from_unsigned(scale.numerator, scale.denominator).map_err(|e| format!("noise scale: {e}"))?;
        let sampler = DiscreteLaplace::new(rational).map_err(|e| format!("noise scale: {e}"))?;
        let z = sampler.sample(&mut self.0);
        i64::try_from(z).ok().filter(|z| z.unsigned_abs() < 1 << 62).ok_or_else(|| "noise out of range".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NoiseKey {
        NoiseKey::from_bytes(&[b; 32]).unwrap()
    }

    fn draws(seed: Seed, cell: &[u8], scale: Scale, n: usize) -> Vec<i64> {
        let mut noise = seed.cell(cell);
        (0..n).map(|_| noise.laplace(scale).unwrap()).collect()
    }

    #[test]
    fn keys_are_checked() {
        assert!(NoiseKey::from_bytes(&[1; 31]).unwrap_err().contains("32 bytes"));
        assert!(NoiseKey::from_bytes(&[0; 32]).unwrap_err().contains("zeros"));
    }

    #[test]
    fn noise_is_deterministic_per_request_key_version_and_mechanism() {
        let scale = Scale::laplace(1, 1, 1_000_000);
        let seed = Seed::for_request(&key(7), b"request", "v1", b"mech");
        let same = draws(seed, b"cell", scale, 50);
        assert_eq!(same, draws(Seed::for_request(&key(7), b"request", "v1", b"mech"), b"cell", scale, 50));
        for other in [
            Seed::for_request(&key(8), b"request", "v1", b"mech"),
            Seed::for_request(&key(7), b"request2", "v1", b"mech"),
            Seed::for_request(&key(7), b"request", "v2", b"mech"),
            Seed::for_request(&key(7), b"request", "v1", b"mech2"),
            // Framing: moving a byte from one part to the next is a different seed.
            Seed::for_request(&key(7), b"reques", "tv1", b"mech"),
        ] {
            assert_ne!(draws(other, b"cell", scale, 50), same);
        }
        assert_ne!(draws(seed, b"cell2", scale, 50), same, "cells get their own noise");
        assert_ne!(seed.ledger_digest(), seed.derive(b"verbund/dp/cell", &[]));
    }

    /// Mean and variance of many samples within tolerance of the distribution's own, at a
    /// fixed seed (so this cannot flake), for small, medium and large scales.
    #[test]
    fn discrete_laplace_has_its_mean_and_variance() {
        let seed = Seed::for_request(&key(3), b"statistics", "v", b"m");
        for (sensitivity, parts, eps_micro) in [(1u64, 1u32, 2_000_000u64), (1, 2, 1_000_000), (60, 5, 1_000_000)] {
            let scale = Scale::laplace(sensitivity, parts, eps_micro);
            let n = 40_000;
            let xs = draws(seed, &sensitivity.to_be_bytes(), scale, n);
            let mean = xs.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let expected = scale.variance();
            let se = (expected / n as f64).sqrt();
            assert!(mean.abs() < 5.0 * se, "t={} mean {mean} (se {se})", scale.as_f64());
            assert!((var / expected - 1.0).abs() < 0.05, "t={} variance {var} vs {expected}", scale.as_f64());
        }
    }

    #[test]
    fn the_tail_bounds_the_probability_of_a_large_draw() {
        let scale = Scale::laplace(1, 2, 1_000_000); // t = 2
        let z = scale.tail(1e-7);
        // p^z / (1 + p) <= 1e-7 with p = exp(-1/2): z >= 2 ln(1e7 / (1 + p)) ≈ 31.2.
        assert_eq!(z, 33);
        // And empirically: with δ = 1e-2, at most about 1 % of draws reach the tail.
        let z = scale.tail(1e-2);
        let xs = draws(Seed::for_request(&key(5), b"tail", "v", b"m"), b"c", scale, 20_000);
        let over = xs.iter().filter(|x| **x >= z as i64).count();
        assert!(over < 200, "{over} of 20000 draws at or above {z}");
    }
}
