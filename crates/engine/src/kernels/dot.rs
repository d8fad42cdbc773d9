//! Dot products of one weight row with a tile of activation rows.
//!
//! A tile shares the work of unpacking the weight block among up to [`TILE`] activation
//! rows: with a batch of concurrent streams the weights are read from memory once per step,
//! not once per stream. Every activation row of a tile is computed with exactly the same
//! operations, in the same order, as a tile of one, so a stream's result does not depend on
//! which other streams share its step.
//!
//! The AVX2 kernels are compiled when the build enables AVX2 and FMA (`.cargo/config.toml`
//! does); otherwise the portable loops run. Tests check the two agree.

use super::quant::{QK, WeightFormat, f16_at};

/// The most activation rows one call handles.
pub const TILE: usize = 8;

/// One row of activations, quantized for a weight format.
#[derive(Debug, Clone, Copy)]
pub struct XRow<'a> {
    /// int8 values (Q8_0 / Q8_1).
    pub qs: &'a [i8],
    /// Block scales.
    pub d: &'a [f32],
    /// Block `scale·Σq` (Q8_1 only).
    pub s: &'a [f32],
    /// `d` and `s` interleaved, block by block (Q8_1 only): the AVX2 kernels load a
    /// block's pair with one instruction.
    pub ds: &'a [f32],
    /// Plain values (F32 weights only).
    pub f: &'a [f32],
}

/// `out[t] = w · xs[t]` for a weight row `w` stored in `format`.
#[inline]
pub fn dot_tile<const T: usize>(format: WeightFormat, w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
    match format {
        WeightFormat::Q4_1 => q4_1(w, xs),
        WeightFormat::Q8_0 => q8_0(w, xs),
        WeightFormat::F32 => portable::f32_rows(w, xs),
    }
}

/// `out[r] = ws[r] · x` for `R` weight rows and one activation row: the mat-vec of a lone
/// stream. Each row's arithmetic is exactly that of [`dot_tile`] with a tile of one, so a
/// stream's logits do not depend on whether it decodes alone or in a batch; taking several
/// rows per pass shares the activation loads and overlaps the rows' dependency chains.
#[inline]
pub fn dot_rows<const R: usize>(format: WeightFormat, ws: [&[u8]; R], x: &XRow<'_>) -> [f32; R] {
    match format {
        WeightFormat::Q4_1 => q4_1_rows(ws, x),
        WeightFormat::Q8_0 => q8_0_rows(ws, x),
        WeightFormat::F32 => ws.map(|w| portable::f32_rows(w, &[*x])[0]),
    }
}

/// Eight running sums of `a[i]·b[i]`, element i into sum i mod 8 by fused multiply-add: the
/// order of llama.cpp's f32 products on AVX2. `a` and `b` are equally long.
pub fn lane_sums(a: &[f32], b: &[f32]) -> [f32; 8] {
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    let mut sums = lane_sums_of_chunks(a8, b8);
    for ((s, x), y) in sums.iter_mut().zip(a_rest).zip(b_rest) {
        *s = x.mul_add(*y, *s);
    }
    sums
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use avx2::{lane_sums_of_chunks, q4_1, q4_1_rows, q8_0, q8_0_rows};
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
use portable::{lane_sums_of_chunks, q4_1, q4_1_rows, q8_0, q8_0_rows};

/// Plain loops: the reference, and the kernels of builds without AVX2.
pub mod portable {
    use super::*;

    pub fn q4_1<const T: usize>(w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
        let mut out = [0f32; T];
        for (b, block) in w.chunks_exact(WeightFormat::Q4_1.block_bytes()).enumerate() {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for (o, x) in out.iter_mut().zip(xs) {
                let q = &x.qs[b * QK..(b + 1) * QK];
                let mut sum = 0i32;
                for (j, &packed) in block[4..].iter().enumerate() {
                    sum += i32::from(packed & 0x0F) * i32::from(q[j]);
                    sum += i32::from(packed >> 4) * i32::from(q[j + QK / 2]);
                }
                *o += d * x.d[b] * sum as f32 + m * x.s[b];
            }
        }
        out
    }

    pub fn q8_0<const T: usize>(w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
        let mut out = [0f32; T];
        for (b, block) in w.chunks_exact(WeightFormat::Q8_0.block_bytes()).enumerate() {
            let d = f16_at(block, 0);
            for (o, x) in out.iter_mut().zip(xs) {
                let q = &x.qs[b * QK..(b + 1) * QK];
                let sum: i32 = block[2..]
                    .iter()
                    .zip(q)
                    .map(|(&wq, &xq)| i32::from(wq as i8) * i32::from(xq))
                    .sum();
                *o += d * x.d[b] * sum as f32;
            }
        }
        out
    }

    pub fn q4_1_rows<const R: usize>(ws: [&[u8]; R], x: &XRow<'_>) -> [f32; R] {
        ws.map(|w| q4_1(w, &[*x])[0])
    }

    pub fn lane_sums_of_chunks(a: &[[f32; 8]], b: &[[f32; 8]]) -> [f32; 8] {
        let mut sums = [0f32; 8];
        for (x, y) in a.iter().zip(b) {
            for lane in 0..8 {
                sums[lane] = x[lane].mul_add(y[lane], sums[lane]);
            }
        }
        sums
    }

    pub fn q8_0_rows<const R: usize>(ws: [&[u8]; R], x: &XRow<'_>) -> [f32; R] {
        ws.map(|w| q8_0(w, &[*x])[0])
    }

    pub fn f32_rows<const T: usize>(w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
        let mut out = [0f32; T];
        for (o, x) in out.iter_mut().zip(xs) {
            // Eight running sums vectorize without reassociating a single sum.
            let mut lanes = [0f32; 8];
            for (wc, xc) in w.chunks_exact(32).zip(x.f.chunks_exact(8)) {
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let b = &wc[i * 4..i * 4 + 4];
                    *lane += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xc[i];
                }
            }
            *o = lanes.iter().sum();
        }
        out
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[expect(
    unsafe_code,
    reason = "SIMD loads through raw pointers; the bounds are checked once per call. \
              Measured: the Q4_1 mat-vec is the hot loop of decoding (BENCHMARKS.md)"
)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only arithmetic; AVX is enabled for the whole build.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Panics unless every activation row holds `blocks` blocks: the one check that makes
    /// the pointer loads below stay in bounds.
    #[inline]
    fn check<const T: usize>(xs: &[XRow<'_>; T], blocks: usize, sums: bool) {
        for x in xs {
            assert!(
                x.qs.len() >= blocks * QK
                    && x.d.len() >= blocks
                    && (!sums || (x.s.len() >= blocks && x.ds.len() >= 2 * blocks)),
                "activation row shorter than the weight row"
            );
        }
    }

    /// The weight block's nibbles, unpacked to 32 bytes: the low halves are values 0..16,
    /// the high halves 16..32, so only the upper 128-bit lane of the broadcast is shifted.
    ///
    /// # Safety
    /// `block` points at a whole Q4_1 block.
    #[inline]
    unsafe fn q4_1_nibbles(block: *const u8) -> __m256i {
        // SAFETY: the 16 nibble bytes follow the 4 scale bytes (caller's contract).
        unsafe {
            let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(4).cast()));
            let shifted = _mm256_srlv_epi32(packed, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
            _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
        }
    }

    /// Q4_1 × Q8_1 for a tile of activation rows. Per block and row, `[d, m]·[x.d, x.s]` is
    /// one vector product: lane 0 scales the integer dot product, lane 1 (`m·s`) is summed
    /// into the row's offset; the same products and sums the portable loop makes.
    pub fn q4_1<const T: usize>(w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
        let bb = WeightFormat::Q4_1.block_bytes();
        let blocks = w.len() / bb;
        check(xs, blocks, true);
        let mut out = [0f32; T];
        // SAFETY: block b of `w` is bytes [b·20, b·20 + 20) < w.len(); the 32 int8 of
        // activation block b are [b·32, b·32 + 32) < qs.len(), and 2b + 1 < ds.len()
        // (checked above). Loads are unaligned. AVX2, FMA and F16C are enabled for the whole
        // build (cfg on the module).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            // Lane 1 holds the row's Σ m·s; lane 0 collects nothing of use.
            let mut offsets = [_mm_setzero_ps(); T];
            let ones = _mm256_set1_epi16(1);
            for b in 0..blocks {
                let block = w.as_ptr().add(b * bb);
                let dm = _mm_cvtph_ps(_mm_loadu_si32(block));
                let wq = q4_1_nibbles(block);
                for t in 0..T {
                    let x = &xs[t];
                    let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * QK).cast());
                    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones);
                    let xds = _mm_castpd_ps(_mm_load_sd(x.ds.as_ptr().add(2 * b).cast()));
                    let scaled = _mm_mul_ps(dm, xds);
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_broadcastss_ps(scaled),
                        _mm256_cvtepi32_ps(pairs),
                        acc[t],
                    );
                    offsets[t] = _mm_add_ps(offsets[t], scaled);
                }
            }
            for t in 0..T {
                out[t] = hsum(acc[t]) + _mm_cvtss_f32(_mm_movehdup_ps(offsets[t]));
            }
        }
        out
    }

    /// One 256-bit multiply-add per chunk (the compiler split the portable loop into
    /// 128-bit halves).
    pub fn lane_sums_of_chunks(a: &[[f32; 8]], b: &[[f32; 8]]) -> [f32; 8] {
        let mut sums = [0f32; 8];
        // SAFETY: every load reads one whole `[f32; 8]` of `a` or `b`; AVX and FMA are
        // enabled for the whole build.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (x, y) in a.iter().zip(b) {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(y.as_ptr()),
                    acc,
                );
            }
            _mm256_storeu_ps(sums.as_mut_ptr(), acc);
        }
        sums
    }

    /// [`q4_1`] with a tile of one, for `R` weight rows at once (the same operations per
    /// row, so the same results).
    pub fn q4_1_rows<const R: usize>(ws: [&[u8]; R], x: &XRow<'_>) -> [f32; R] {
        let bb = WeightFormat::Q4_1.block_bytes();
        let blocks = ws[0].len() / bb;
        assert!(
            ws.iter().all(|w| w.len() == blocks * bb),
            "weight rows differ in length"
        );
        check(&[*x], blocks, true);
        let mut out = [0f32; R];
        // SAFETY: as in `q4_1`; every weight row holds `blocks` blocks (asserted above).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut offsets = [_mm_setzero_ps(); R];
            let ones = _mm256_set1_epi16(1);
            for b in 0..blocks {
                let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * QK).cast());
                let xds = _mm_castpd_ps(_mm_load_sd(x.ds.as_ptr().add(2 * b).cast()));
                for r in 0..R {
                    let block = ws[r].as_ptr().add(b * bb);
                    let scaled = _mm_mul_ps(_mm_cvtph_ps(_mm_loadu_si32(block)), xds);
                    let wq = q4_1_nibbles(block);
                    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_broadcastss_ps(scaled),
                        _mm256_cvtepi32_ps(pairs),
                        acc[r],
                    );
                    offsets[r] = _mm_add_ps(offsets[r], scaled);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(offsets[r]));
            }
        }
        out
    }

    /// [`q8_0`] with a tile of one, for `R` weight rows at once.
    pub fn q8_0_rows<const R: usize>(ws: [&[u8]; R], x: &XRow<'_>) -> [f32; R] {
        let bb = WeightFormat::Q8_0.block_bytes();
        let blocks = ws[0].len() / bb;
        assert!(
            ws.iter().all(|w| w.len() == blocks * bb),
            "weight rows differ in length"
        );
        check(&[*x], blocks, false);
        let mut out = [0f32; R];
        // SAFETY: as in `q8_0`; every weight row holds `blocks` blocks (asserted above).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let ones = _mm256_set1_epi16(1);
            for b in 0..blocks {
                let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * QK).cast());
                let xd = *x.d.get_unchecked(b);
                for r in 0..R {
                    let block = ws[r].as_ptr().add(b * bb);
                    let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                        block.cast::<u16>().read_unaligned(),
                    ))));
                    let wq = _mm256_loadu_si256(block.add(2).cast());
                    let wabs = _mm256_sign_epi8(wq, wq);
                    let signed = _mm256_sign_epi8(xq, wq);
                    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, signed), ones);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(pairs), acc[r]);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
        }
        out
    }

    pub fn q8_0<const T: usize>(w: &[u8], xs: &[XRow<'_>; T]) -> [f32; T] {
        let bb = WeightFormat::Q8_0.block_bytes();
        let blocks = w.len() / bb;
        check(xs, blocks, false);
        let mut out = [0f32; T];
        // SAFETY: as in q4_1: block b of `w` is [b·34, b·34 + 34), activation block b is
        // [b·32, b·32 + 32) and b < d.len(), all in bounds; AVX2, FMA and F16C are enabled for
        // the whole build.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            let ones = _mm256_set1_epi16(1);
            for b in 0..blocks {
                let block = w.as_ptr().add(b * bb);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    block.cast::<u16>().read_unaligned(),
                ))));
                let wq = _mm256_loadu_si256(block.add(2).cast());
                // maddubs multiplies unsigned by signed: move w's sign onto x.
                let wabs = _mm256_sign_epi8(wq, wq);
                for t in 0..T {
                    let x = &xs[t];
                    let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * QK).cast());
                    let signed = _mm256_sign_epi8(xq, wq);
                    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, signed), ones);
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * *x.d.get_unchecked(b)),
                        _mm256_cvtepi32_ps(pairs),
                        acc[t],
                    );
                }
            }
            for t in 0..T {
                out[t] = hsum(acc[t]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::quant::quantize_row;
    use super::super::quant::tests::{to_q4_1, to_q8_0};
    use super::*;

    struct Quantized {
        qs: Vec<i8>,
        d: Vec<f32>,
        s: Vec<f32>,
        ds: Vec<f32>,
        f: Vec<f32>,
    }

    fn quantized(x: &[f32]) -> Quantized {
        let mut q = Quantized {
            qs: vec![0; x.len()],
            d: vec![0.0; x.len() / QK],
            s: vec![0.0; x.len() / QK],
            ds: Vec::new(),
            f: x.to_vec(),
        };
        quantize_row(x, true, &mut q.qs, &mut q.d, &mut q.s);
        q.ds = q.d.iter().zip(&q.s).flat_map(|(d, s)| [*d, *s]).collect();
        q
    }

    fn row(q: &Quantized) -> XRow<'_> {
        XRow {
            qs: &q.qs,
            d: &q.d,
            s: &q.s,
            ds: &q.ds,
            f: &q.f,
        }
    }

    fn wave(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0) * 3.0)
            .collect()
    }

    #[test]
    fn tiles_match_the_float_dot_product_and_each_other() {
        let k = 8 * QK;
        let w = wave(k, 1);
        let inputs: Vec<Quantized> = (0..TILE).map(|t| quantized(&wave(k, t + 2))).collect();
        let exact = |x: &Quantized| w.iter().zip(&x.f).map(|(a, b)| a * b).sum::<f32>();
        let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (format, bytes, tolerance) in [
            (WeightFormat::Q4_1, to_q4_1(&w), 0.2),
            (WeightFormat::Q8_0, to_q8_0(&w), 0.05),
            (WeightFormat::F32, f32_bytes, 1e-3),
        ] {
            let rows: [XRow<'_>; TILE] = std::array::from_fn(|t| row(&inputs[t]));
            let tile = dot_tile(format, &bytes, &rows);
            let (portable, _) = match format {
                WeightFormat::Q4_1 => (portable::q4_1(&bytes, &rows), ()),
                WeightFormat::Q8_0 => (portable::q8_0(&bytes, &rows), ()),
                WeightFormat::F32 => (portable::f32_rows(&bytes, &rows), ()),
            };
            let other: Vec<u8> = bytes.iter().rev().copied().collect();
            let other = match format {
                WeightFormat::F32 => bytes.clone(),
                _ => other.iter().map(|b| b & 0x3b).collect(),
            };
            for t in 0..TILE {
                let one = dot_tile(format, &bytes, &[rows[t]])[0];
                let pair = dot_rows(format, [&bytes, &other], &rows[t]);
                assert_eq!(pair[0].to_bits(), one.to_bits(), "{format:?}: rows vs tile");
                let other_one = dot_tile(format, &other, &[rows[t]])[0];
                assert_eq!(
                    pair[1].to_bits(),
                    other_one.to_bits(),
                    "{format:?}: second row"
                );
                assert_eq!(one.to_bits(), tile[t].to_bits(), "{format:?}: tile vs one");
                let want = exact(&inputs[t]);
                let scale = want.abs().max(1.0) * tolerance;
                assert!(
                    (tile[t] - want).abs() <= scale,
                    "{format:?}: {} vs {want}",
                    tile[t]
                );
                assert!(
                    (tile[t] - portable[t]).abs() <= 1e-3 * want.abs().max(1.0),
                    "{format:?}: simd {} vs portable {}",
                    tile[t],
                    portable[t]
                );
            }
        }
    }

    #[test]
    fn lane_sums_match_the_portable_order() {
        for len in [0, 5, 8, 64, 70] {
            let (a, b) = (wave(len, 3), wave(len, 4));
            let mut want = [0f32; 8];
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                want[i % 8] = x.mul_add(*y, want[i % 8]);
            }
            assert_eq!(lane_sums(&a, &b).map(f32::to_bits), want.map(f32::to_bits));
        }
    }

    #[test]
    #[should_panic(expected = "shorter")]
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    fn short_activations_are_refused() {
        let w = to_q4_1(&wave(2 * QK, 1));
        let x = quantized(&wave(QK, 2));
        let _ = dot_tile(WeightFormat::Q4_1, &w, &[row(&x)]);
    }
}
