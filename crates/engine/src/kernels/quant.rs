//! GGUF block formats we compute on directly, and the quantization of activations.
//!
//! Layouts (32 values per block, little-endian, as GGUF stores them):
//! - Q4_1: `d: f16, m: f16, qs: [u8; 16]`; value j is `d·q + m` with q the low nibble of
//!   `qs[j]` for j < 16 and the high nibble of `qs[j-16]` otherwise.
//! - Q8_0: `d: f16, qs: [i8; 32]`; value j is `d·qs[j]`.
//! - F32: plain floats.
//!
//! Activations are quantized the way llama.cpp's AVX2 build does it (`127 / amax` as the
//! inverse scale, round half to even, scales stored as f16), and their scales are kept as
//! f32 after that f16 rounding so the inner loops need no conversions.

use half::f16;

/// Values per quantization block.
pub const QK: usize = 32;

/// A weight matrix format with kernels of our own. Others go through candle (see
/// `crate::llama::linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    Q8_0,
    Q4_1,
}

impl WeightFormat {
    /// Bytes of one block of [`QK`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => QK * 4,
            WeightFormat::Q8_0 => 2 + QK,
            WeightFormat::Q4_1 => 4 + QK / 2,
        }
    }

    /// The quantization of activations this format's dot product takes.
    pub fn activation(self) -> ActFormat {
        match self {
            WeightFormat::F32 => ActFormat::F32,
            WeightFormat::Q8_0 => ActFormat::Q8_0,
            WeightFormat::Q4_1 => ActFormat::Q8_1,
        }
    }
}

/// How a row of activations is stored for a dot product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    F32,
    /// int8 values with one scale per block.
    Q8_0,
    /// int8 values with one scale and one `scale·Σq` per block (for formats with an offset).
    Q8_1,
}

/// Reads the f16 at `bytes[at..at + 2]` as f32.
#[inline]
pub fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Rounds through f16 and back, as storing a scale in a GGUF-style block does.
#[inline]
pub fn through_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantizes one row of `x` (a multiple of [`QK`] long) to int8 blocks: values into `qs`,
/// block scales into `d` and, for Q8_1, `d·Σq` into `s`.
pub fn quantize_row(x: &[f32], with_sums: bool, qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, block) in x.chunks_exact(QK).enumerate() {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qs[b * QK..(b + 1) * QK].iter_mut().zip(block) {
            // |v · 127/amax| ≤ 127, so the cast cannot saturate.
            let r = (v * inverse).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        d[b] = through_f16(scale);
        if with_sums {
            s[b] = through_f16(scale * sum as f32);
        }
    }
}

/// Dequantizes one row stored in `format` into `out` (its length gives the row length).
pub fn dequantize_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    let bb = format.block_bytes();
    for (block, out) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        match format {
            WeightFormat::F32 => {
                for (o, b) in out.iter_mut().zip(block.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            WeightFormat::Q8_0 => {
                let d = f16_at(block, 0);
                for (o, &q) in out.iter_mut().zip(&block[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }
            WeightFormat::Q4_1 => {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                let (lo, hi) = out.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
                    *l = d * f32::from(q & 0x0F) + m;
                    *h = d * f32::from(q >> 4) + m;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Quantizes `x` into Q4_1 blocks the way GGUF writers do (min/max per block).
    pub(crate) fn to_q4_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for block in x.chunks_exact(QK) {
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            for j in 0..QK / 2 {
                let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                out.push(q(block[j]) | (q(block[j + QK / 2]) << 4));
            }
        }
        out
    }

    /// Quantizes `x` into Q8_0 blocks.
    pub(crate) fn to_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / QK];
        quantize_row(x, false, &mut qs, &mut d, &mut []);
        for (b, scale) in d.iter().enumerate() {
            out.extend(f16::from_f32(*scale).to_le_bytes());
            out.extend(qs[b * QK..(b + 1) * QK].iter().map(|q| *q as u8));
        }
        out
    }

    #[test]
    fn quantize_then_dequantize_stays_close() {
        let x: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for (format, bytes, tolerance) in [
            (WeightFormat::Q4_1, to_q4_1(&x), 0.5),
            (WeightFormat::Q8_0, to_q8_0(&x), 0.03),
        ] {
            let mut back = vec![0f32; x.len()];
            dequantize_row(format, &bytes, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tolerance, "{format:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let x = [0f32; QK];
        let (mut qs, mut d, mut s) = ([1i8; QK], [1f32], [1f32]);
        quantize_row(&x, true, &mut qs, &mut d, &mut s);
        assert!(qs.iter().all(|q| *q == 0));
        assert_eq!((d[0], s[0]), (0.0, 0.0));
    }

    #[test]
    fn sums_carry_the_scaled_total() {
        let x: Vec<f32> = (0..QK).map(|i| i as f32 - 10.0).collect();
        let (mut qs, mut d, mut s) = ([0i8; QK], [0f32], [0f32]);
        quantize_row(&x, true, &mut qs, &mut d, &mut s);
        let total: i32 = qs.iter().map(|q| i32::from(*q)).sum();
        assert!((s[0] - d[0] * total as f32).abs() <= 1e-2 * s[0].abs().max(1.0));
        assert_eq!(qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }
}
