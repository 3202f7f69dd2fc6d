//! Small, explicit random helpers. Each user draws from a generator seeded by (world seed,
//! user id, stream), so the world does not depend on thread count or chunking.

use rand::Rng;

/// SplitMix64 finaliser over the three inputs: well-mixed seeds for independent streams.
pub fn stream_seed(seed: u64, user: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(user.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(stream.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard normal by Box-Muller.
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Poisson by inversion; fine for the small rates of daily events.
pub fn poisson(rng: &mut impl Rng, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let mut product: f64 = rng.random();
    let mut k = 0;
    while product > limit && k < 1000 {
        product *= rng.random::<f64>();
        k += 1;
    }
    k
}

/// Index drawn with probability proportional to the step of a cumulative table.
pub fn pick_cdf(rng: &mut impl Rng, cdf: &[f64]) -> usize {
    let total = *cdf.last().unwrap_or(&0.0);
    let target = rng.random::<f64>() * total;
    cdf.partition_point(|&c| c <= target)
        .min(cdf.len().saturating_sub(1))
}

pub fn pick_weighted(rng: &mut impl Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if target < *w {
            return i;
        }
        target -= w;
    }
    weights.len() - 1
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn poisson_mean_is_close_to_lambda() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let total: u32 = (0..n).map(|_| poisson(&mut rng, 0.8)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 0.8).abs() < 0.03, "{mean}");
    }

    #[test]
    fn streams_differ_by_user_and_stream() {
        assert_ne!(stream_seed(1, 2, 3), stream_seed(1, 3, 2));
        assert_eq!(stream_seed(1, 2, 3), stream_seed(1, 2, 3));
    }
}
