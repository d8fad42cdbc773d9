//! `Y = X · Wᵀ` for a quantized weight matrix `W` (rows × cols) and a batch of activation
//! rows `X` (n × cols), split by weight rows over the replica's [`SpinPool`].
//!
//! Each task takes a band of weight rows and runs every activation row against each of them
//! in tiles ([`super::dot::TILE`]), so a weight row is read from memory once per call while
//! the (small) activations stay in cache.

use std::sync::{Arc, Mutex};

use super::dot::{TILE, XRow, dot_rows, dot_tile};
use super::pool::SpinPool;
use super::quant::{ActFormat, QK, WeightFormat, dequantize_row, quantize_row};

/// A weight matrix in one of our formats, row-major, one GGUF row per output.
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl QMatrix {
    /// Wraps GGUF tensor bytes; errors if the sizes disagree.
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) {
            return Err(format!("{cols} columns is not a multiple of {QK}"));
        }
        let want = rows * cols / QK * format.block_bytes();
        if data.len() != want {
            return Err(format!(
                "{rows}×{cols} {format:?} needs {want} bytes, found {}",
                data.len()
            ));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// Stacks matrices with the same format and width (e.g. Q, K and V) into one, so one
    /// pass computes all of them; `None` if they differ.
    pub fn stack(parts: Vec<QMatrix>) -> Option<QMatrix> {
        let first = parts.first()?;
        let (format, cols) = (first.format, first.cols);
        if parts.iter().any(|p| p.format != format || p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = parts.into_iter().flat_map(|p| p.data).collect();
        Some(QMatrix {
            format,
            rows,
            cols,
            data,
        })
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK * self.format.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` as floats into `out` (`cols` long): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.format, self.row(r), out);
    }
}

/// One activation row's values, scales and sums, handed to one task.
type RowParts<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [f32]);

/// Below this many rows, activations are quantized on the calling thread.
const PARALLEL_QUANTIZE_ROWS: usize = 32;

/// Activation rows quantized for one weight format; reused between calls to avoid
/// allocating on every step.
#[derive(Debug, Default)]
pub struct Activations {
    format: Option<ActFormat>,
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// `d` and `s` interleaved (Q8_1), see [`XRow::ds`].
    ds: Vec<f32>,
    f: Vec<f32>,
}

impl Activations {
    /// Quantizes `x` (n rows of `cols`) for `format`, reusing the buffers.
    pub fn prepare(&mut self, pool: &SpinPool, format: WeightFormat, x: &[f32], cols: usize) {
        let act = format.activation();
        let n = x.len() / cols;
        self.format = Some(act);
        self.cols = cols;
        match act {
            ActFormat::F32 => {
                self.f.clear();
                self.f.extend_from_slice(x);
            }
            ActFormat::Q8_0 | ActFormat::Q8_1 => {
                let blocks = cols / QK;
                self.qs.resize(n * cols, 0);
                self.d.resize(n * blocks, 0.0);
                self.s.resize(n * blocks, 0.0);
                let sums = act == ActFormat::Q8_1;
                // A few rows take a microsecond; threads would cost more than they save.
                if n < PARALLEL_QUANTIZE_ROWS {
                    x.chunks_exact(cols)
                        .zip(self.qs.chunks_exact_mut(cols))
                        .zip(self.d.chunks_exact_mut(blocks))
                        .zip(self.s.chunks_exact_mut(blocks))
                        .for_each(|(((x, qs), d), s)| quantize_row(x, sums, qs, d, s));
                } else {
                    let rows: Vec<Mutex<RowParts<'_>>> = self
                        .qs
                        .chunks_exact_mut(cols)
                        .zip(self.d.chunks_exact_mut(blocks))
                        .zip(self.s.chunks_exact_mut(blocks))
                        .map(|((qs, d), s)| Mutex::new((qs, d, s)))
                        .collect();
                    pool.run(n, &|i| {
                        if let Ok(mut row) = rows[i].lock() {
                            let (qs, d, s) = &mut *row;
                            quantize_row(&x[i * cols..(i + 1) * cols], sums, qs, d, s);
                        }
                    });
                }
                self.ds.clear();
                if sums {
                    let pairs = self.d.iter().zip(&self.s).flat_map(|(d, s)| [*d, *s]);
                    self.ds.extend(pairs);
                }
            }
        }
    }

    fn row(&self, i: usize) -> XRow<'_> {
        let blocks = self.cols / QK;
        let c = self.cols;
        match self.format {
            Some(ActFormat::F32) => XRow {
                qs: &[],
                d: &[],
                s: &[],
                ds: &[],
                f: &self.f[i * c..(i + 1) * c],
            },
            Some(ActFormat::Q8_1) => XRow {
                qs: &self.qs[i * c..(i + 1) * c],
                d: &self.d[i * blocks..(i + 1) * blocks],
                s: &self.s[i * blocks..(i + 1) * blocks],
                ds: &self.ds[2 * i * blocks..2 * (i + 1) * blocks],
                f: &[],
            },
            Some(ActFormat::Q8_0) | None => XRow {
                qs: &self.qs[i * c..(i + 1) * c],
                d: &self.d[i * blocks..(i + 1) * blocks],
                s: &[],
                ds: &[],
                f: &[],
            },
        }
    }
}

/// What a matrix product needs besides its operands: the threads, and buffers kept from
/// call to call so a step allocates nothing.
#[derive(Debug)]
pub struct Workspace {
    pub pool: Arc<SpinPool>,
    acts: Activations,
    transposed: Vec<f32>,
}

impl Workspace {
    pub fn new(pool: Arc<SpinPool>) -> Self {
        Self {
            pool,
            acts: Activations::default(),
            transposed: Vec::new(),
        }
    }
}

/// `out = x · wᵀ`: `x` is n rows of `w.cols()`, `out` n rows of `w.rows()`.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32], ws: &mut Workspace) {
    let n = x.len() / w.cols;
    debug_assert_eq!(out.len(), n * w.rows);
    if n == 0 {
        return;
    }
    let Workspace {
        pool,
        acts,
        transposed,
    } = ws;
    acts.prepare(pool, w.format, x, w.cols);
    let xs: Vec<XRow<'_>> = (0..n).map(|j| acts.row(j)).collect();
    // Tasks of whole bands of rows; small enough that both threads stay busy, large enough
    // that scheduling stays cheap next to the arithmetic.
    let band = (w.rows / (pool.threads() * 8)).clamp(8, 256);
    let target: &mut [f32] = if n == 1 {
        out
    } else {
        // Per task the output of a band is (rows of the band) × n; transposed back after.
        transposed.resize(w.rows * n, 0.0);
        transposed
    };
    let bands: Vec<Mutex<&mut [f32]>> = target.chunks_mut(band * n).map(Mutex::new).collect();
    pool.run(bands.len(), &|i| {
        if let Ok(mut out) = bands[i].lock() {
            rows_times_batch(w, &xs, i * band, &mut out);
        }
    });
    drop(bands);
    if n > 1 {
        for (r, row) in transposed.chunks_exact(n).enumerate() {
            for (j, v) in row.iter().enumerate() {
                out[j * w.rows + r] = *v;
            }
        }
    }
}

/// Fills `out` (consecutive weight rows from `first`, each followed by its results for every
/// row of `xs`).
///
/// The activations are taken a chunk at a time, a chunk small enough to stay in L1 while
/// every weight row of the band passes over it.
fn rows_times_batch(w: &QMatrix, xs: &[XRow<'_>], first: usize, out: &mut [f32]) {
    let n = xs.len();
    if let [x] = xs {
        return rows_times_one(w, x, first, out);
    }
    let chunk = activation_chunk(w.cols);
    for (j0, chunk) in xs.chunks(chunk).enumerate().map(|(c, x)| (c * chunk, x)) {
        for (k, out) in out.chunks_exact_mut(n).enumerate() {
            let wr = w.row(first + k);
            let out = &mut out[j0..j0 + chunk.len()];
            let (tiles, rest) = chunk.as_chunks::<TILE>();
            let (outs, out_rest) = out.as_chunks_mut::<TILE>();
            for (x, o) in tiles.iter().zip(outs) {
                *o = dot_tile(w.format, wr, x);
            }
            // The last few rows, in tiles of 4, 2 and 1.
            let mut j = 0;
            while j < rest.len() {
                let left = rest.len() - j;
                j += if left >= 4 {
                    tail::<4>(w.format, wr, &rest[j..], &mut out_rest[j..])
                } else if left >= 2 {
                    tail::<2>(w.format, wr, &rest[j..], &mut out_rest[j..])
                } else {
                    tail::<1>(w.format, wr, &rest[j..], &mut out_rest[j..])
                };
            }
        }
    }
}

/// [`rows_times_batch`] for a lone activation row: weight rows go [`ROWS`] at a time.
fn rows_times_one(w: &QMatrix, x: &XRow<'_>, first: usize, out: &mut [f32]) {
    let mut groups = out.chunks_exact_mut(ROWS);
    let mut r = first;
    for out in &mut groups {
        let got = dot_rows(
            w.format,
            std::array::from_fn::<_, ROWS, _>(|i| w.row(r + i)),
            x,
        );
        out.copy_from_slice(&got);
        r += ROWS;
    }
    for out in groups.into_remainder() {
        *out = dot_rows(w.format, [w.row(r)], x)[0];
        r += 1;
    }
}

/// Weight rows per pass in a mat-vec.
const ROWS: usize = 2;

/// Activation rows per chunk: about 16 KiB of int8 values, a whole number of tiles.
fn activation_chunk(cols: usize) -> usize {
    ((16 << 10) / cols.max(1) / TILE).max(1) * TILE
}

/// The first `T` rows of `xs` against weight row `wr`, into `out`; returns `T`.
#[inline]
fn tail<const T: usize>(
    format: WeightFormat,
    wr: &[u8],
    xs: &[XRow<'_>],
    out: &mut [f32],
) -> usize {
    let rows: [XRow<'_>; T] = std::array::from_fn(|t| xs[t]);
    out[..T].copy_from_slice(&dot_tile(format, wr, &rows));
    T
}

#[cfg(test)]
mod tests {
    use super::super::quant::tests::to_q4_1;
    use super::*;

    #[test]
    fn batched_rows_equal_one_at_a_time() {
        let (rows, cols) = (37, 4 * QK);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let w = QMatrix::new(WeightFormat::Q4_1, rows, cols, to_q4_1(&w)).unwrap();
        let n = 13;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let mut ws = Workspace::new(Arc::new(SpinPool::new(2, "test").unwrap()));
        let mut batched = vec![0f32; n * rows];
        matmul(&w, &x, &mut batched, &mut ws);
        for j in 0..n {
            let mut one = vec![0f32; rows];
            matmul(&w, &x[j * cols..(j + 1) * cols], &mut one, &mut ws);
            assert_eq!(one, batched[j * rows..(j + 1) * rows], "row {j}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(QMatrix::new(WeightFormat::Q4_1, 2, 33, vec![]).is_err());
        assert!(QMatrix::new(WeightFormat::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QMatrix::new(WeightFormat::Q4_1, 2, 32, vec![0; 40]).is_ok());
    }

    #[test]
    fn stacking_needs_one_format_and_width() {
        let a = QMatrix::new(WeightFormat::Q4_1, 1, 32, vec![0; 20]).unwrap();
        let b = QMatrix::new(WeightFormat::Q8_0, 1, 32, vec![0; 34]).unwrap();
        assert!(QMatrix::stack(vec![a.clone(), b]).is_none());
        let s = QMatrix::stack(vec![a.clone(), a]).unwrap();
        assert_eq!((s.rows(), s.cols()), (2, 32));
    }
}
