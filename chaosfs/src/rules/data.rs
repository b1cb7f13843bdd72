//! Deterministic randomness and the data faults (corruption) applied to buffers.
//!
//! Every random decision is a pure function of (spec seed, rule index, the rule's match sequence
//! number, purpose), so the same seed and the same request sequence give the same faults, with
//! no shared random generator to lock.

use super::CorruptMode;

/// SplitMix64's output function: a good 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a random value is used for: separate streams per purpose.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Purpose {
    Percent = 1,
    ErrnoChoice = 2,
    Jitter = 3,
    Corrupt = 4,
}

/// The random value for one decision.
pub(crate) fn decide(seed: u64, rule: usize, seq: u64, purpose: Purpose) -> u64 {
    mix(mix(mix(seed ^ (purpose as u64).wrapping_mul(0xA076_1D64_78BD_642F)) ^ rule as u64) ^ seq)
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub(crate) struct Stream(u64);

impl Stream {
    pub(crate) fn new(seed: u64) -> Self {
        Stream(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias worth caring about for buffer sizes.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        // (x * n) / 2^64 with x < 2^64 is below n, so it fits a usize; 0 is only a formal
        // fallback.
        usize::try_from((u128::from(self.next_u64()) * n as u128) >> 64).unwrap_or(0)
    }
}

/// How one corrupt fault changes a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CorruptPlan {
    pub mode: CorruptMode,
    /// At most this many bytes change (`usize::MAX`: all of them).
    pub max_bytes: usize,
    /// Seed of this fault's stream.
    pub seed: u64,
}

impl CorruptPlan {
    /// Corrupt `buf` in place.
    ///
    /// * `zeros`: a run of `min(len, max_bytes)` bytes at a random offset becomes zero.
    /// * `random`: such a run gets random bytes, each one different from what was there.
    /// * `bitflip`: `min(len, max_bytes)` distinct bytes each get exactly one bit flipped (the
    ///   buffer is cut into that many equal parts and one byte of each part is chosen).
    pub(crate) fn apply(&self, buf: &mut [u8]) {
        let len = buf.len();
        let n = len.min(self.max_bytes);
        if n == 0 {
            return;
        }
        let mut rng = Stream::new(self.seed);
        match self.mode {
            CorruptMode::Zeros | CorruptMode::Random => {
                let start = rng.below(len - n + 1);
                let run = &mut buf[start..start + n];
                if self.mode == CorruptMode::Zeros {
                    run.fill(0);
                } else {
                    for chunk in run.chunks_mut(7) {
                        let mut r = rng.next_u64();
                        for b in chunk {
                            // XOR with a non-zero byte: uniform over the 255 other values.
                            let x = r.to_le_bytes()[0] % 255 + 1;
                            *b ^= x;
                            r >>= 8;
                        }
                    }
                }
            }
            CorruptMode::BitFlip => {
                let part = len / n;
                for k in 0..n {
                    let lo = k * part;
                    let hi = if k + 1 == n { len } else { lo + part };
                    let pos = lo + rng.below(hi - lo);
                    let bit = rng.below(8);
                    buf[pos] ^= 1 << bit;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    fn plan(mode: CorruptMode, max_bytes: usize, seed: u64) -> CorruptPlan {
        CorruptPlan {
            mode,
            max_bytes,
            seed,
        }
    }

    #[test]
    fn zeros_whole_buffer_and_limited_run() {
        let mut buf = vec![0xAAu8; 4096];
        plan(CorruptMode::Zeros, usize::MAX, 1).apply(&mut buf);
        assert!(buf.iter().all(|&b| b == 0));

        let orig = vec![0x55u8; 4096];
        let mut buf = orig.clone();
        plan(CorruptMode::Zeros, 100, 7).apply(&mut buf);
        assert_eq!(diff(&orig, &buf), 100);
        let first = buf.iter().position(|&b| b == 0).expect("a zero");
        assert!(
            buf[first..first + 100].iter().all(|&b| b == 0),
            "one contiguous run"
        );
    }

    #[test]
    fn random_changes_every_byte_of_the_run() {
        let orig: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut buf = orig.clone();
        plan(CorruptMode::Random, usize::MAX, 3).apply(&mut buf);
        assert_eq!(diff(&orig, &buf), orig.len());
        let mut buf = orig.clone();
        plan(CorruptMode::Random, 10, 3).apply(&mut buf);
        assert_eq!(diff(&orig, &buf), 10);
        // Bytes look random: every value appears in a large buffer.
        let mut big = vec![0u8; 1 << 16];
        plan(CorruptMode::Random, usize::MAX, 9).apply(&mut big);
        let mut seen = [false; 256];
        for b in &big {
            seen[usize::from(*b)] = true;
        }
        assert!(seen[1..].iter().all(|&s| s), "every non-zero value appears");
    }

    #[test]
    fn bitflip_flips_exactly_one_bit_in_n_bytes() {
        for (len, max) in [
            (1, 1),
            (4096, 1),
            (4096, 3),
            (10, 10),
            (10, 50),
            (4096, 4096),
        ] {
            let orig = vec![0u8; len];
            let mut buf = orig.clone();
            plan(CorruptMode::BitFlip, max, 42).apply(&mut buf);
            assert_eq!(diff(&orig, &buf), len.min(max), "len {len} max {max}");
            assert!(buf.iter().all(|b| b.count_ones() <= 1));
            let bits: u32 = buf.iter().map(|b| b.count_ones()).sum();
            assert_eq!(bits as usize, len.min(max));
        }
    }

    #[test]
    fn same_seed_same_damage_other_seed_other_damage() {
        let orig: Vec<u8> = (0..4096u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
        let run = |seed| {
            let mut b = orig.clone();
            plan(CorruptMode::BitFlip, 8, seed).apply(&mut b);
            b
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn empty_buffer_is_fine() {
        let mut buf = [];
        plan(CorruptMode::Random, usize::MAX, 1).apply(&mut buf);
        plan(CorruptMode::BitFlip, 1, 1).apply(&mut buf);
    }

    #[test]
    fn decisions_are_stable_and_spread() {
        assert_eq!(
            decide(1, 2, 3, Purpose::Percent),
            decide(1, 2, 3, Purpose::Percent)
        );
        assert_ne!(
            decide(1, 2, 3, Purpose::Percent),
            decide(1, 2, 3, Purpose::Jitter)
        );
        assert_ne!(
            decide(1, 2, 3, Purpose::Percent),
            decide(1, 3, 3, Purpose::Percent)
        );
        let mut s = Stream::new(0);
        let n = 100_000;
        let low = (0..n).filter(|_| s.below(100) < 50).count();
        assert!((45_000..55_000).contains(&low), "{low}");
    }
}
