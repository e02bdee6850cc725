//! Seeded randomness (training, benchmarks): one small generator, and streams derived from
//! `(seed, purpose, counters)` so that any step's random draws (data order, slerp pairs,
//! augmentations, dropout) can be recomputed after a resume without saving generator state.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, statistically sound for this use.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// What a stream is for; mixed into its seed so that streams never overlap.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    Shuffle = 1,
    Slerp = 2,
    Augment = 3,
    Dropout = 4,
    Init = 5,
    Subset = 6,
    /// DINOv3's rotary coordinates in training mode.
    Rope = 7,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The generator for `stream` at `counters` (e.g. epoch and mini-batch index).
    pub fn derive(seed: u64, stream: Stream, counters: &[u64]) -> Self {
        let mut r = Self(seed ^ (stream as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let mut h = r.next_u64();
        for &c in counters {
            r.0 = h ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h = r.next_u64();
        }
        Self(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `[0, n)` (Lemire's multiply-shift; the bias is below 2^-40 here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(42, Stream::Slerp, &[3, 7]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::derive(42, Stream::Slerp, &[3, 7]).next_u64(),
            Rng::derive(42, Stream::Slerp, &[7, 3]).next_u64()
        );
        assert_ne!(Rng::derive(42, Stream::Slerp, &[3]).next_u64(), Rng::derive(42, Stream::Shuffle, &[3]).next_u64());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::new(1).permutation(100);
        p.sort_unstable();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
