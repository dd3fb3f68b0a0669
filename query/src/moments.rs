//! Count, mean and M2 (sum of squared deviations from the mean) of a set of numbers:
//! Welford's update for single values and Chan et al.'s formula to merge two sets. Unlike
//! raw sums of squares, this keeps full precision for large values with a small spread
//! (e.g. 1e9 + N(0, 1)), where `sum(x²) - n·mean²` cancels catastrophically.
//!
//! The mean is kept relative to a `shift` (while accumulating, the first value seen): near
//! 1e9 an f64 resolves only ~1e-7, and rounding the running mean there would cost the
//! variance about that much relative precision. Differences of nearby values are exact, so
//! shifted sums stay exact. Before a state leaves a node it is [`Moments::recentred`] on its
//! own mean, so that no single patient's value travels as the shift.

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub count: u64,
    /// Reference value the mean is relative to.
    pub shift: f64,
    /// Mean of `x - shift`.
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        if self.count == 0 {
            self.shift = x;
        }
        let y = x - self.shift;
        self.count += 1;
        let delta = y - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (y - self.mean);
    }

    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        // The other mean relative to this shift; the shift difference is exact for nearby shifts.
        let delta = (other.shift - self.shift) + other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
    }

    /// The same moments with the shift moved to the mean itself (rounded to f64) and the
    /// rounding residual kept as the relative mean: full precision is kept, and the shift is
    /// an aggregate of all values instead of the first value seen.
    pub fn recentred(&self) -> Moments {
        if self.count == 0 {
            return Moments::default();
        }
        let shift = self.shift + self.mean;
        // (old shift - new shift) is exact when they are close (Sterbenz); the residual is
        // what the rounded new shift misses of the true mean.
        let mean = (self.shift - shift) + self.mean;
        Moments { count: self.count, shift, mean, m2: self.m2 }
    }

    /// The mean; `None` without values.
    pub fn mean(&self) -> Option<f64> {
        (self.count >= 1).then_some(self.shift + self.mean)
    }

    /// Sample variance (n - 1 in the denominator); `None` below two values.
    pub fn variance_sample(&self) -> Option<f64> {
        (self.count >= 2).then(|| self.m2 / (self.count - 1) as f64)
    }

    /// Population variance; `None` without values.
    pub fn variance_population(&self) -> Option<f64> {
        (self.count >= 1).then(|| self.m2 / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(xs: &[f64]) -> Moments {
        let mut m = Moments::default();
        xs.iter().for_each(|x| m.push(*x));
        m
    }

    #[test]
    fn merge_equals_pooled() {
        let a = [1.0, 2.0, 4.0, 8.0];
        let b = [3.0, 5.0, 7.0];
        let mut m = of(&a);
        m.merge(&of(&b));
        let pooled = of(&[a.as_slice(), b.as_slice()].concat());
        assert_eq!(m.count, 7);
        assert!((m.mean().unwrap() - pooled.mean().unwrap()).abs() < 1e-12);
        assert!((m.m2 - pooled.m2).abs() < 1e-12);
        // mean 30/7, sum of squares 168: M2 = 168 - 900/7
        assert!((m.m2 - (168.0 - 900.0 / 7.0)).abs() < 1e-9);
        assert!((m.mean().unwrap() - 30.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn merge_with_empty_is_identity() {
        let mut m = of(&[1.0, 2.0]);
        m.merge(&Moments::default());
        assert_eq!(m, of(&[1.0, 2.0]));
        let mut e = Moments::default();
        e.merge(&m);
        assert_eq!(e, m);
        assert_eq!(Moments::default().variance_population(), None);
        assert_eq!(of(&[1.0]).variance_sample(), None);
    }

    #[test]
    fn recentring_hides_the_first_value_and_keeps_precision() {
        let offsets = [-1.5, -0.5, 0.0, 0.25, 0.5, 1.25, -0.75, 0.75, 0.125];
        let xs: Vec<f64> = offsets.iter().map(|o| 1e9 + 7.0 + o).collect();
        let (a, b) = (of(&xs[..4]).recentred(), of(&xs[4..]).recentred());
        assert!(!xs.contains(&a.shift) && !xs.contains(&b.shift), "a shift is a patient's value");
        assert!((a.shift - (1e9 + 7.0 - 0.4375)).abs() < 1e-6, "the shift is the group's mean: {}", a.shift);
        let mut m = a;
        m.merge(&b);
        let exact = of(&offsets).variance_sample().unwrap();
        assert!(((m.variance_sample().unwrap() - exact) / exact).abs() < 1e-12);
        assert_eq!(Moments::default().recentred(), Moments::default());
    }

    #[test]
    fn large_values_with_small_spread_keep_their_variance() {
        // 1e9 + a few small offsets with known variance; a sum-of-squares merge loses it.
        let offsets = [-1.5, -0.5, 0.0, 0.25, 0.5, 1.25, -0.75, 0.75];
        let xs: Vec<f64> = offsets.iter().map(|o| 1e9 + o).collect();
        let exact = of(&offsets).variance_sample().unwrap();
        let mut m = of(&xs[..3]);
        m.merge(&of(&xs[3..6]));
        m.merge(&of(&xs[6..]));
        let merged = m.variance_sample().unwrap();
        assert!(((merged - exact) / exact).abs() < 1e-9, "{merged} vs {exact}");

        // The naive way: add up n, sum and sum of squares per part, then finish.
        let (n, s, ss) = [&xs[..3], &xs[3..6], &xs[6..]].iter().fold((0.0, 0.0, 0.0), |acc, part| {
            (
                acc.0 + part.len() as f64,
                acc.1 + part.iter().sum::<f64>(),
                acc.2 + part.iter().map(|x| x * x).sum::<f64>(),
            )
        });
        let naive = (ss - s * s / n) / (n - 1.0);
        assert!(((naive - exact) / exact).abs() > 1e-3, "naive {naive} happened to be right");
    }
}
