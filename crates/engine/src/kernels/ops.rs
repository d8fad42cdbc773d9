//! The element-wise and per-row operations of a transformer layer, in f32.
//!
//! Sums that llama.cpp accumulates in double (the RMS norm's mean square, the softmax
//! denominator) are accumulated in f64 here too.

/// `out = x / rms(x) · weight`, row by row (`weight.len()` is the row length).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (x, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = x.iter().map(|v| f64::from(v * v)).sum::<f64>() / dim as f64;
        let scale = 1.0 / (mean as f32 + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// How a model pairs the dimensions it rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama and mistral GGUFs (llama.cpp's "norm" mode).
    Interleaved,
    /// Halves (i, i + d/2): qwen2 and others (llama.cpp's "neox" mode).
    Halves,
}

/// Precomputed cos/sin of every position and frequency.
#[derive(Debug, Clone)]
pub struct Rope {
    style: RopeStyle,
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `positions` positions of a head of `dims` rotated dimensions.
    pub fn new(style: RopeStyle, dims: usize, base: f32, positions: usize) -> Self {
        let half = dims / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        // θ_i = p · base^(−2i/d), formed by repeated multiplication in f32 as llama.cpp does.
        let step = base.powf(-2.0 / dims as f32);
        for p in 0..positions {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= step;
            }
        }
        Self {
            style,
            half,
            cos,
            sin,
        }
    }

    /// The most positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head (`head_dim` long) of one token's vector `x` at position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let (cos, sin) = (
            &self.cos[pos * self.half..(pos + 1) * self.half],
            &self.sin[pos * self.half..(pos + 1) * self.half],
        );
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..self.half {
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + self.half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// `gate = silu(gate) · up`, element-wise.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let scale = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= scale;
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_gives_unit_rms() {
        let x = [3.0, -4.0, 0.0, 5.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_keeps_norms_and_position_zero_is_identity() {
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let rope = Rope::new(style, 8, 10000.0, 16);
            let x: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
            let mut at0 = x.clone();
            rope.apply(&mut at0, 8, 0);
            assert_eq!(at0, x);
            let mut at9 = x.clone();
            rope.apply(&mut at9, 8, 9);
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((norm(&at9) - norm(&x)).abs() < 1e-3);
            assert_ne!(at9, x);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }
}
