//! Alignment and uniformity of features (Wang & Isola 2020, arXiv 2005.10242), for logging.
//!
//! Ports yermandy/deepfake-detection `src/losses/unifalign.py` on plain slices; the features
//! are used as given (the original assumes them L2-normalised and does not normalise).
//! Computed in f64.

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
}

/// Label-aware alignment: the mean of `||x_i - x_j||^alpha` over pairs `i < j` with equal
/// labels; 0 when there is no such pair (as the original). The original's `alpha` is 2.
///
/// # Panics
/// If `features` and `labels` differ in length.
pub fn alignment(features: &[Vec<f32>], labels: &[usize], alpha: f64) -> f64 {
    assert_eq!(features.len(), labels.len(), "features and labels differ in length");
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..features.len() {
        for j in i + 1..features.len() {
            if labels[i] == labels[j] {
                sum += squared_distance(&features[i], &features[j]).sqrt().powf(alpha);
                pairs += 1;
            }
        }
    }
    if pairs == 0 { 0.0 } else { sum / pairs as f64 }
}

/// Uniformity: `log(max(mean_{i<j} exp(-t ||x_i - x_j||^2), 1e-6))`; `None` with fewer than
/// two features (the original's `torch.pdist` mean is NaN there). The original's `t` is 2.
pub fn uniformity(features: &[Vec<f32>], t: f64) -> Option<f64> {
    let n = features.len();
    if n < 2 {
        return None;
    }
    let mut sum = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            sum += (-t * squared_distance(&features[i], &features[j])).exp();
        }
    }
    let pairs = (n * (n - 1) / 2) as f64;
    Some((sum / pairs).max(1e-6).ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original's `__main__` example: five unit vectors, labels 0 0 0 1 1.
    fn example() -> (Vec<Vec<f32>>, Vec<usize>) {
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let f = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![s, s], vec![0.0, 1.0], vec![0.0, 1.0]];
        (f, vec![0, 0, 0, 1, 1])
    }

    #[test]
    fn matches_the_originals_example() {
        let (f, l) = example();
        // Same-label pairs: (0,1) 0, (0,2) and (1,2) 2 - sqrt(2), (3,4) 0 -> mean of squares.
        let d = 2.0 - 2f64.sqrt();
        assert!((alignment(&f, &l, 2.0) - 2.0 * d / 4.0).abs() < 1e-6);
        // All ten pairs: squared distances 0 (x2), 2 - sqrt 2 (x4), 2 (x4).
        let mean = (2.0 + 4.0 * (-2.0 * d).exp() + 4.0 * (-4.0f64).exp()) / 10.0;
        assert!((uniformity(&f, 2.0).unwrap() - mean.ln()).abs() < 1e-6);
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(alignment(&[vec![1.0]], &[0], 2.0), 0.0);
        assert_eq!(alignment(&[vec![1.0], vec![0.0]], &[0, 1], 2.0), 0.0);
        assert_eq!(uniformity(&[vec![1.0]], 2.0), None);
    }
}
