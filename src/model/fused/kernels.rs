//! The scalar loops, written so that the compiler vectorises them; compiled three times, for
//! the baseline x86-64, AVX2 + FMA and AVX-512 (chosen at run time).
#![allow(clippy::too_many_arguments)]

/// `exp(x)` (Cephes `expf`: range reduction by ln 2, degree-5 polynomial, 2^n by exponent
/// bits); 0 below -87.3 and +inf above 88.7, like libm.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.722_83);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    let scale = pow2(n);
    let out = y * scale;
    if x < -87.336_55 {
        0.0
    } else if x > 88.722_83 {
        f32::INFINITY
    } else {
        out
    }
}

/// `2^n` for an integer `n` in [-126, 128] (+inf at 128), by its exponent bits: added to
/// 1.5·2^23 + 127, `n` lands as `n + 127` in the low mantissa bits, which the shift moves into
/// the exponent. The same bits as `(n as i32 + 127) << 23`, whose saturating conversion does not
/// vectorise (it made [`exp`]'s loops scalar).
#[inline(always)]
fn pow2(n: f32) -> f32 {
    f32::from_bits((n + 12_583_039.0).to_bits() << 23)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

macro_rules! dispatched {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `erf(x)` to within 1.5e-7 (Abramowitz & Stegun 7.1.26, with [`exp`]): `1 - t·P(t)·e^(-x²)`,
/// `t = 1 / (1 + 0.3275911 |x|)`, odd in `x`. Its error is absolute, which is what the exact
/// GELU `x/2 · (1 + erf(x/√2))` needs (the error is added to 1).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let y = 1.0 - p * exp(-a * a);
    y.copysign(x)
}

dispatched! {
    /// In place: the exact (erf) GELU, `x/2 · (1 + erf(x/√2))`.
    fn gelu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x *= 0.5 * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `Φ(x) + x φ(x)`, the exact GELU's derivative.
#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    // 1 / √(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

dispatched! {
    /// `g ← g · (Φ(x) + x φ(x))`, the exact GELU's derivative.
    fn gelu_grad(xs: &[f32], gs: &mut [f32]) {
        for (g, &x) in gs.iter_mut().zip(xs) {
            *g *= gelu_derivative(x);
        }
    }
}

dispatched! {
    /// In place: `x · sigmoid(1.702 x)`.
    fn quick_gelu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x *= sigmoid(1.702 * *x);
        }
    }
}

dispatched! {
    /// `g ← g · (s + 1.702 x s (1 - s))`, `s = sigmoid(1.702 x)`.
    fn quick_gelu_grad(xs: &[f32], gs: &mut [f32]) {
        for (g, &x) in gs.iter_mut().zip(xs) {
            let s = sigmoid(1.702 * x);
            *g *= s + 1.702 * x * s * (1.0 - s);
        }
    }
}

dispatched! {
    /// In place, one row: `exp(x - max) / Σ exp(x - max)`.
    fn softmax(row: &mut [f32]) {
        // Three loops without a carried dependency each (a running sum inside the `exp`
        // loop would keep it from vectorising).
        let max = max(row);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / sum(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

dispatched! {
    /// One row: `g ← y · (g - Σ g · y)`.
    fn softmax_grad(y: &[f32], g: &mut [f32]) {
        let dot = dot(y, g);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - dot);
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), kept in an f32: what PyTorch's
/// `Tensor.to(torch.bfloat16)` keeps of a value (c10's `round_to_nearest_even`); NaN stays NaN.
#[inline(always)]
pub fn bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000);
    if x.is_nan() { x } else { rounded }
}

dispatched! {
    /// In place: every value rounded to bfloat16 ([`bf16`]).
    fn round_bf16(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = bf16(*x);
        }
    }
}

/// `x` as bfloat16 bits, as [`to_bf16_bits`].
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { (bits >> 16) as u16 | 0x0040 } else { rounded }
}

dispatched! {
    /// `src` as bfloat16 bits in `dst` (as long): rounded to nearest even as [`bf16`], a NaN a
    /// quiet NaN (as `half::bf16::from_f32`). The operands of oneDNN's native products.
    fn to_bf16_bits(src: &[f32], dst: &mut [u16]) {
        for (d, x) in dst.iter_mut().zip(src) {
            *d = bf16_bits(*x);
        }
    }
}

/// `x · sigmoid(1.702 x)` as PyTorch computes it on a bfloat16 tensor, three operations each
/// rounded to bfloat16: `a = 1.702 x`, `s = sigmoid(a)`, `x · s` (before the last rounding).
#[inline(always)]
fn quick_gelu_bf16_unrounded(x: f32) -> f32 {
    x * bf16(sigmoid(bf16(1.702 * x)))
}

/// The gradient `g` of [`quick_gelu_bf16_unrounded`]'s rounded output, back at `x`, as PyTorch's
/// autograd computes it in bfloat16: `g·s` (the product's), `1.702 · sigmoid_backward(g·x, s)`
/// (the scaled sigmoid's), each rounded, and their sum rounded.
#[inline(always)]
fn quick_gelu_bf16_backward(x: f32, g: f32) -> f32 {
    quick_gelu_bf16_backward_through(x, quick_gelu_bf16_sigmoid(x), g)
}

/// The rounded sigmoid [`quick_gelu_bf16_unrounded`] multiplies `x` by.
#[inline(always)]
fn quick_gelu_bf16_sigmoid(x: f32) -> f32 {
    bf16(sigmoid(bf16(1.702 * x)))
}

/// [`quick_gelu_bf16_backward`] given the rounded sigmoid `s` of `x`.
#[inline(always)]
fn quick_gelu_bf16_backward_through(x: f32, s: f32, g: f32) -> f32 {
    let through_product = bf16(g * s);
    let ds = bf16(g * x);
    let da = bf16(ds * (1.0 - s) * s);
    bf16(through_product + bf16(da * 1.702))
}

/// A bf16-mixed MLP's activation of a bfloat16 value, before its rounding: CLIP's quick GELU
/// as ATen computes it on bfloat16 ([`quick_gelu_bf16_unrounded`]) where `QUICK`, else the
/// exact GELU (one operation). A constant, so that a loop over it has no branch and vectorises.
#[inline(always)]
fn activation_bf16_unrounded<const QUICK: bool>(x: f32) -> f32 {
    if QUICK { quick_gelu_bf16_unrounded(x) } else { x * (0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))) }
}

/// Every bfloat16 value, by its bits: a function of a bfloat16 input has 65,536 values.
type Bf16Table<T> = [T; 1 << 16];

/// The tables of a bf16-mixed MLP's activation, one entry per bfloat16 input: the output's bits
/// ([`activation_bf16_unrounded`], rounded) and what its gradient multiplies by (the quick
/// GELU's rounded sigmoid, [`quick_gelu_bf16_sigmoid`]; the exact GELU's derivative).
///
/// A table, made once from the same functions, gives the same bits as evaluating them: an
/// input of a bfloat16 activation is one of 65,536 values, and a lookup replaces the `exp`, the
/// division and the roundings per value (the kernels' share of the bf16-mixed step fell from 5.5 %
/// to 2.3 %, BENCHMARKS.md; `gelu_tables_are_the_activations_functions` checks every entry's use).
pub struct ActivationTables {
    output: Box<Bf16Table<u16>>,
    slope: Box<Bf16Table<f32>>,
}

impl ActivationTables {
    fn make<const QUICK: bool>() -> Self {
        let input = |b: usize| f32::from_bits((b as u32) << 16);
        let mut output = Box::new([0u16; 1 << 16]);
        let mut slope = Box::new([0f32; 1 << 16]);
        for (b, (o, s)) in output.iter_mut().zip(slope.iter_mut()).enumerate() {
            let x = input(b);
            *o = bf16_bits(activation_bf16_unrounded::<QUICK>(x));
            *s = if QUICK { quick_gelu_bf16_sigmoid(x) } else { gelu_derivative(x) };
        }
        Self { output, slope }
    }

    /// CLIP's quick GELU's tables where `quick`, else the exact GELU's; made on first use.
    pub fn get(quick: bool) -> &'static Self {
        static QUICK: std::sync::OnceLock<ActivationTables> = std::sync::OnceLock::new();
        static EXACT: std::sync::OnceLock<ActivationTables> = std::sync::OnceLock::new();
        if quick { QUICK.get_or_init(Self::make::<true>) } else { EXACT.get_or_init(Self::make::<false>) }
    }
}

dispatched! {
    /// In place: `x · sigmoid(1.702 x)` as PyTorch computes it on a bfloat16 tensor
    /// ([`quick_gelu_bf16_unrounded`], rounded).
    fn quick_gelu_bf16(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = bf16(quick_gelu_bf16_unrounded(*x));
        }
    }
}

dispatched! {
    /// `src`, a bf16-mixed product's output before its rounding, rounded, through the
    /// activation as ATen computes it on a bfloat16 tensor ([`quick_gelu_bf16`] for CLIP's
    /// quick GELU, else the exact GELU rounded once; by `tables`), as bfloat16 bits in `dst`:
    /// three passes over the activations (the rounding, the activation, the next product's
    /// conversion) in one.
    fn gelu_bf16_bits(src: &[f32], dst: &mut [u16], tables: &ActivationTables) {
        let output = &*tables.output;
        for (d, x) in dst.iter_mut().zip(src) {
            *d = output[usize::from(bf16_bits(*x))];
        }
    }
}

dispatched! {
    /// [`gelu_bf16_bits`] that also keeps the rounded input, as bits in `input`: what the
    /// backward pass ([`gelu_bf16_grad_bits`]) reads.
    fn gelu_bf16_bits_keeping_input(src: &[f32], input: &mut [u16], dst: &mut [u16], tables: &ActivationTables) {
        let output = &*tables.output;
        for ((d, i), x) in dst.iter_mut().zip(input.iter_mut()).zip(src) {
            let bits = bf16_bits(*x);
            *i = bits;
            *d = output[usize::from(bits)];
        }
    }
}

dispatched! {
    /// The gradient of [`gelu_bf16_bits`] for its input, as bfloat16 bits in `dst`, from the
    /// kept rounded input `xs` (bits) and the gradient `gs` of the output, which the next
    /// product's backward pass gives unrounded: the passes of autocast's backward in one (the
    /// gradient rounded as a bfloat16 tensor's; through the activation, [`quick_gelu_bf16_grad`]
    /// or the exact GELU's derivative; rounded again for the first product's output).
    fn gelu_bf16_grad_bits(xs: &[u16], gs: &[f32], dst: &mut [u16], tables: &ActivationTables, quick: bool) {
        #[inline(always)]
        fn each<const QUICK: bool>(xs: &[u16], gs: &[f32], dst: &mut [u16], slope: &Bf16Table<f32>) {
            for ((d, &bits), g) in dst.iter_mut().zip(xs).zip(gs) {
                let (x, s, g) = (f32::from_bits(u32::from(bits) << 16), slope[usize::from(bits)], bf16(*g));
                *d = bf16_bits(if QUICK { quick_gelu_bf16_backward_through(x, s, g) } else { g * s });
            }
        }
        if quick { each::<true>(xs, gs, dst, &tables.slope) } else { each::<false>(xs, gs, dst, &tables.slope) }
    }
}

dispatched! {
    /// The gradient of [`quick_gelu_bf16`] as PyTorch's autograd computes it in bfloat16
    /// ([`quick_gelu_bf16_backward`]).
    fn quick_gelu_bf16_grad(xs: &[f32], gs: &mut [f32]) {
        for (g, &x) in gs.iter_mut().zip(xs) {
            *g = quick_gelu_bf16_backward(x, *g);
        }
    }
}

/// `x`, rounded to bfloat16 when `round` (the attention kernels run with and without).
#[inline(always)]
fn maybe_bf16(x: f32, round: bool) -> f32 {
    if round { bf16(x) } else { x }
}

dispatched! {
    /// Attention scores, in place: `row ← row · scale`, and `max` their largest value.
    fn scale_and_max(row: &mut [f32], scale: f32, largest: &mut f32) {
        for x in row.iter_mut() {
            *x *= scale;
        }
        *largest = max(row);
    }
}

dispatched! {
    /// `out ← exp(row - shift)` (rounded when `round`), `total` the sum of the unrounded values.
    fn exp_and_sum(row: &[f32], shift: f32, out: &mut [f32], total: &mut f32, round: bool) {
        for (o, x) in out.iter_mut().zip(row) {
            *o = exp(x - shift);
        }
        *total = sum(out);
        if round {
            for o in out.iter_mut() {
                *o = bf16(*o);
            }
        }
    }
}

dispatched! {
    /// In place: `row ← exp(row - shift)`; when `round`, `copy` gets the values rounded.
    fn exp_shifted(row: &mut [f32], shift: f32, copy: &mut [f32], round: bool) {
        for x in row.iter_mut() {
            *x = exp(*x - shift);
        }
        if round {
            for (c, x) in copy.iter_mut().zip(row.iter()) {
                *c = bf16(*x);
            }
        }
    }
}

dispatched! {
    /// In place: `acc ← acc · by + part` (rounded when `round`).
    fn scale_add(acc: &mut [f32], by: f32, part: &[f32], round: bool) {
        for (a, p) in acc.iter_mut().zip(part) {
            *a = maybe_bf16(*a * by + p, round);
        }
    }
}

dispatched! {
    /// In place: `xs ← xs · by` (rounded when `round`).
    fn scale_by(xs: &mut [f32], by: f32, round: bool) {
        for x in xs.iter_mut() {
            *x = maybe_bf16(*x * by, round);
        }
    }
}

dispatched! {
    /// The softmax gradient of one row of attention: `da ← a · (da - dsum)` (rounded when `round`).
    fn attention_ds(a: &[f32], da: &mut [f32], dsum: f32, round: bool) {
        for (d, a) in da.iter_mut().zip(a) {
            *d = maybe_bf16(a * (*d - dsum), round);
        }
    }
}

dispatched! {
    /// `total ← Σ a · b`.
    fn dot_into(a: &[f32], b: &[f32], total: &mut f32) {
        *total = dot(a, b);
    }
}

/// Σ over a slice with 16 independent partial sums (so that it vectorises).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The largest value of a slice (-inf if empty), with 16 independent partial maxima.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Σ a · b, as [`sum`].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Mean and 1 / sqrt(biased variance + eps) of a row (two passes).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut acc = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
    for c in chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let var = (acc.iter().sum::<f32>() + rest) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

dispatched! {
    /// In place, one row: `(x - mean) · rstd · gamma + beta`.
    fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let (mean, rstd) = moments(row, eps);
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * rstd * g + b;
        }
    }
}

dispatched! {
    /// One row's [`layer_norm`] as bfloat16 bits in `dst` (as [`to_bf16_bits`] of its values):
    /// the input of bf16 products in one pass, without the f32 row in between.
    fn layer_norm_bf16_bits(row: &[f32], gamma: &[f32], beta: &[f32], eps: f32, dst: &mut [u16]) {
        let (mean, rstd) = moments(row, eps);
        for (((d, x), g), b) in dst.iter_mut().zip(row).zip(gamma).zip(beta) {
            *d = bf16_bits((*x - mean) * rstd * g + b);
        }
    }
}

dispatched! {
    /// One row: adds `g · x̂` to `dgamma` and `g` to `dbeta`, and (if `want_x`) replaces `g`
    /// by `rstd · (g γ - mean(g γ) - x̂ · mean(g γ x̂))`.
    fn layer_norm_grad(
        x: &[f32],
        gamma: &[f32],
        g: &mut [f32],
        eps: f32,
        want_x: bool,
        want_params: bool,
        dgamma: &mut [f32],
        dbeta: &mut [f32]
    ) {
        let n = x.len() as f32;
        let (mean, rstd) = moments(x, eps);
        if want_params {
            for (((dg, db), &gi), &xi) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g.iter()).zip(x) {
                *dg += gi * (xi - mean) * rstd;
                *db += gi;
            }
        }
        if want_x {
            let mut a = [0.0f32; 16];
            let mut c = [0.0f32; 16];
            let mut k = 0;
            for ((&gi, &gm), &xi) in g.iter().zip(gamma).zip(x) {
                let gg = gi * gm;
                a[k] += gg;
                c[k] += gg * (xi - mean) * rstd;
                k = (k + 1) & 15;
            }
            let (mean_gg, mean_ggx) = (a.iter().sum::<f32>() / n, c.iter().sum::<f32>() / n);
            for ((gi, &gm), &xi) in g.iter_mut().zip(gamma).zip(x) {
                let xhat = (xi - mean) * rstd;
                *gi = rstd * (*gi * gm - mean_gg - xhat * mean_ggx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The vectorised conversion gives `half`'s bits for every value: a sweep of bit patterns
    /// (normal, subnormal, ties, infinities, NaNs with payloads in the high or only the low bits).
    #[test]
    fn bf16_bits_are_halfs() {
        let mut xs: Vec<f32> = (0..1u64 << 32).step_by(65_537).map(|b| f32::from_bits(b as u32)).collect();
        xs.extend([0.0, -0.0, 1.0 + f32::EPSILON * 64.0, 1.0 + f32::EPSILON * 192.0, f32::INFINITY, f32::NEG_INFINITY]);
        xs.extend([f32::from_bits(0x7f80_0001), f32::from_bits(0xffc0_0000), f32::from_bits(0x0000_8000)]);
        let mut bits = vec![0u16; xs.len()];
        super::to_bf16_bits(&xs, &mut bits);
        for (x, b) in xs.iter().zip(&bits) {
            assert_eq!(*b, half::bf16::from_f32(*x).to_bits(), "{:#010x}", x.to_bits());
        }
    }

    /// The LayerNorm that writes bfloat16 bits gives the bits of the f32 LayerNorm converted
    /// after it, row by row, over widths around the vector lengths and values of many scales.
    #[test]
    fn layer_norm_bits_are_the_converted_layer_norm() {
        let mut seed = 7u32;
        let mut value = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2f32.powi((seed % 13) as i32 - 6)
        };
        for n in [1, 7, 16, 33, 64, 100, 1024] {
            let (gamma, beta): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (value(), value())).unzip();
            for _ in 0..20 {
                let row: Vec<f32> = (0..n).map(|_| value()).collect();
                let mut want = row.clone();
                super::layer_norm(&mut want, &gamma, &beta, 1e-5);
                let mut want_bits = vec![0u16; n];
                super::to_bf16_bits(&want, &mut want_bits);
                let mut bits = vec![0u16; n];
                super::layer_norm_bf16_bits(&row, &gamma, &beta, 1e-5, &mut bits);
                assert_eq!(bits, want_bits, "width {n}");
            }
        }
    }

    /// The table-driven activation kernels give the bits of the functions they are made from,
    /// evaluated on each value: every bfloat16 input (and f32 inputs just below, at and above a
    /// rounding tie), both activations, forward and backward, a NaN only as a NaN.
    #[test]
    fn gelu_tables_are_the_activations_functions() {
        use super::*;
        let mut xs = Vec::with_capacity(4 << 16);
        for b in 0..1u32 << 16 {
            xs.extend([b << 16, (b << 16) | 0x7fff, (b << 16) | 0x8000, (b << 16) | 0x8001].map(f32::from_bits));
        }
        let mut seed = 11u32;
        let gs: Vec<f32> = (0..xs.len())
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.03
            })
            .collect();
        let same = |got: u16, want: u16| got == want || (is_nan(got) && is_nan(want));
        for quick in [true, false] {
            let tables = ActivationTables::get(quick);
            let n = xs.len();
            let (mut out, mut kept, mut input, mut grad) = (vec![0u16; n], vec![0u16; n], vec![0u16; n], vec![0u16; n]);
            gelu_bf16_bits(&xs, &mut out, tables);
            gelu_bf16_bits_keeping_input(&xs, &mut input, &mut kept, tables);
            gelu_bf16_grad_bits(&input, &gs, &mut grad, tables, quick);
            for (i, (&x, &g)) in xs.iter().zip(&gs).enumerate() {
                let r = bf16(x);
                let want = if quick {
                    bf16_bits(activation_bf16_unrounded::<true>(r))
                } else {
                    bf16_bits(activation_bf16_unrounded::<false>(r))
                };
                let want_grad = if quick {
                    bf16_bits(quick_gelu_bf16_backward(r, bf16(g)))
                } else {
                    bf16_bits(bf16(g) * gelu_derivative(r))
                };
                let at = format!("quick {quick}, x {:#010x}, g {g:e}", x.to_bits());
                assert!(same(out[i], want), "{at}: {:#06x} against {want:#06x}", out[i]);
                assert!(same(kept[i], want), "{at}: kept pass {:#06x} against {want:#06x}", kept[i]);
                assert!(same(input[i], bf16_bits(r)), "{at}: kept input {:#06x}", input[i]);
                assert!(same(grad[i], want_grad), "{at}: gradient {:#06x} against {want_grad:#06x}", grad[i]);
            }
        }
    }

    fn is_nan(bits: u16) -> bool {
        bits & 0x7f80 == 0x7f80 && bits & 0x007f != 0
    }

    #[test]
    fn pow2_is_powi_over_exps_range() {
        for n in -126..=127 {
            assert_eq!(super::pow2(n as f32), 2f32.powi(n), "2^{n}");
        }
        assert_eq!(super::pow2(128.0), f32::INFINITY);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5 * f32::EPSILON, "{worst:e}");
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(100.0), f32::INFINITY);
    }
}
