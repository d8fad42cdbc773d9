//! The batched forward pass: any mix of prefill chunks and decode tokens from many
//! sequences in one call, each token attending to its own sequence's cache only.
//!
//! Every matrix product runs once over all tokens of the step (that is the batching); the
//! rest is per token and independent of the other tokens, so a sequence's logits are the
//! same whatever else shares its step and however its prompt was split into chunks.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use std::sync::{Arc, Mutex};

use super::kv::{BLOCK_TOKENS, KvCache};
use super::weights::{LlamaModel, ProjectionScratch};
use crate::error::EngineError;
use crate::kernels::dot::lane_sums;
use crate::kernels::ops::{add_assign, rms_norm, silu_mul, softmax};
use crate::kernels::quant::through_f16;
use crate::kernels::{SpinPool, Workspace};

/// The tokens of one step.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub tokens: &'a [u32],
    /// The position of each token in its sequence.
    pub positions: &'a [usize],
    /// For each token, its sequence: an index into `tables`.
    pub seq_of: &'a [usize],
    /// The KV block table of each sequence, already grown to hold this step's positions.
    pub tables: &'a [&'a [u32]],
    /// The tokens whose next-token logits are wanted, in the order they are returned.
    pub logit_rows: &'a [usize],
}

/// Buffers reused from step to step, and the threads a step runs on.
#[derive(Debug)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    proj: ProjectionScratch,
}

impl Scratch {
    pub fn new(pool: Arc<SpinPool>) -> Self {
        Self {
            x: Vec::new(),
            h: Vec::new(),
            qkv: Vec::new(),
            attn: Vec::new(),
            o: Vec::new(),
            gate_up: Vec::new(),
            act: Vec::new(),
            last: Vec::new(),
            logits: Vec::new(),
            proj: ProjectionScratch::new(Workspace::new(pool)),
        }
    }
}

impl LlamaModel {
    /// Runs one step; returns the logits of `step.logit_rows`, `vocab` floats each.
    pub fn forward<'s>(
        &self,
        kv: &mut KvCache,
        step: &Step<'_>,
        s: &'s mut Scratch,
    ) -> Result<&'s [f32], EngineError> {
        let c = &self.config;
        let n = step.tokens.len();
        let (dim, qd, kvd, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        self.check(kv, step)?;

        s.x.resize(n * dim, 0.0);
        for (row, &token) in s.x.chunks_exact_mut(dim).zip(step.tokens) {
            self.embeddings.dequantize_row(token as usize, row);
        }
        s.h.resize(n * dim, 0.0);
        s.attn.resize(n * qd, 0.0);
        s.o.resize(n * dim, 0.0);
        s.act.resize(n * ffn, 0.0);
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.h);
            let width = layer.qkv.width();
            s.qkv.resize(n * width, 0.0);
            layer.qkv.forward(&s.h, dim, &mut s.qkv, &mut s.proj)?;
            for (t, row) in s.qkv.chunks_exact_mut(width).enumerate() {
                if let Some(bias) = &layer.qkv_bias {
                    add_assign(row, bias);
                }
                let pos = step.positions[t];
                let (q, kv_part) = row.split_at_mut(qd);
                let (k, v) = kv_part.split_at_mut(kvd);
                self.rotate(q, pos);
                self.rotate(k, pos);
                kv.write(l, step.tables[step.seq_of[t]], pos, k, v);
            }
            let pool = &s.proj.ws.pool;
            attention(pool, self, kv, l, step, &s.qkv, width, &mut s.attn);
            layer
                .attn_output
                .forward(&s.attn, qd, &mut s.o, &mut s.proj.ws)?;
            add_assign(&mut s.x, &s.o);

            rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.h);
            s.gate_up.resize(n * 2 * ffn, 0.0);
            layer
                .gate_up
                .forward(&s.h, dim, &mut s.gate_up, &mut s.proj)?;
            for (act, gu) in s
                .act
                .chunks_exact_mut(ffn)
                .zip(s.gate_up.chunks_exact_mut(2 * ffn))
            {
                let (gate, up) = gu.split_at_mut(ffn);
                silu_mul(gate, up);
                act.copy_from_slice(gate);
            }
            layer.down.forward(&s.act, ffn, &mut s.o, &mut s.proj.ws)?;
            add_assign(&mut s.x, &s.o);
        }

        let rows = step.logit_rows.len();
        s.last.resize(rows * dim, 0.0);
        for (out, &t) in s.last.chunks_exact_mut(dim).zip(step.logit_rows) {
            rms_norm(
                &s.x[t * dim..(t + 1) * dim],
                &self.output_norm,
                c.rms_eps,
                out,
            );
        }
        s.logits.resize(rows * self.vocab, 0.0);
        self.output
            .forward(&s.last, dim, &mut s.logits, &mut s.proj.ws)?;
        Ok(&s.logits)
    }

    fn rotate(&self, x: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let rd = self.config.rope_dims;
        if rd == hd {
            self.rope.apply(x, hd, pos);
        } else {
            for head in x.chunks_exact_mut(hd) {
                self.rope.apply(&mut head[..rd], rd, pos);
            }
        }
    }

    /// Refuses steps that would index out of bounds: bad token ids, positions past the
    /// rotary tables or the block tables.
    fn check(&self, kv: &KvCache, step: &Step<'_>) -> Result<(), EngineError> {
        let n = step.tokens.len();
        let bad = |what: String| Err(EngineError::Generation(format!("invalid step: {what}")));
        if step.positions.len() != n || step.seq_of.len() != n {
            return bad("token, position and sequence counts differ".into());
        }
        if kv.layers() != self.layers.len() || kv.kv_dim() != self.config.kv_dim() {
            return bad("the KV cache was made for another model".into());
        }
        for t in 0..n {
            if step.tokens[t] as usize >= self.vocab {
                return bad(format!("token id {} is out of range", step.tokens[t]));
            }
            let pos = step.positions[t];
            if pos >= self.rope.positions() {
                return bad(format!("position {pos} is past the context"));
            }
            match step.tables.get(step.seq_of[t]) {
                Some(table) if KvCache::blocks_for(pos + 1) <= table.len() => {}
                _ => return bad(format!("no KV block for position {pos}")),
            }
        }
        if step.logit_rows.iter().any(|&t| t >= n) {
            return bad("a logit row is not a token of the step".into());
        }
        Ok(())
    }
}

/// Below this many (query, key) pairs over all heads, attention runs on the calling thread.
/// A head of a lone decoding stream at 128 positions takes a few microseconds, already more
/// than handing it to the pool costs (measured: attention was 12 % of a 256-token decode
/// run on the caller while the other thread waited).
const PARALLEL_ATTENTION_WORK: usize = 1024;

/// Causal attention for every token of the step, written into `out` (n rows of q_dim).
///
/// Work is split by (sequence segment, head): a segment is the run of consecutive tokens of
/// one sequence in the step, so a prefill chunk converts each cached block once for all its
/// tokens rather than once per token.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, all of them needed"
)]
fn attention(
    pool: &SpinPool,
    model: &LlamaModel,
    kv: &KvCache,
    layer: usize,
    step: &Step<'_>,
    qkv: &[f32],
    width: usize,
    out: &mut [f32],
) {
    let c = &model.config;
    let (hd, qd) = (c.head_dim, c.q_dim());
    let mut segments: Vec<(usize, usize)> = Vec::new(); // (first token, tokens)
    for t in 0..step.tokens.len() {
        match segments.last_mut() {
            Some((first, n)) if step.seq_of[*first] == step.seq_of[t] => *n += 1,
            _ => segments.push((t, 1)),
        }
    }
    let tasks: Vec<(usize, usize)> = (0..segments.len())
        .flat_map(|s| (0..c.heads).map(move |h| (s, h)))
        .collect();
    let one = |a: &mut HeadAttention, &(seg, head): &(usize, usize)| {
        let (first, n) = segments[seg];
        let table = step.tables[step.seq_of[first]];
        let query = |i: usize| &qkv[(first + i) * width + head * hd..][..hd];
        a.run(
            model,
            kv,
            layer,
            table,
            step.positions[first],
            n,
            head,
            query,
        )
    };
    // Work ≈ query tokens × positions they see; small steps are not worth the threads.
    let work: usize = segments
        .iter()
        .map(|&(first, n)| n * (step.positions[first] + n))
        .sum();
    let results: Vec<Vec<f32>> = if work * c.heads < PARALLEL_ATTENTION_WORK {
        let mut a = HeadAttention::default();
        tasks.iter().map(|t| one(&mut a, t)).collect()
    } else {
        let slots: Vec<Mutex<Vec<f32>>> = tasks.iter().map(|_| Mutex::new(Vec::new())).collect();
        pool.run(tasks.len(), &|i| {
            let result = one(&mut HeadAttention::default(), &tasks[i]);
            if let Ok(mut slot) = slots[i].lock() {
                *slot = result;
            }
        });
        slots
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_default())
            .collect()
    };
    for (&(seg, head), result) in tasks.iter().zip(results) {
        let (first, n) = segments[seg];
        for i in 0..n {
            out[(first + i) * qd + head * hd..][..hd]
                .copy_from_slice(&result[i * hd..(i + 1) * hd]);
        }
    }
}

/// Per-thread buffers of the attention of one head over a segment.
#[derive(Default)]
struct HeadAttention {
    q: Vec<f32>,
    scores: Vec<f32>,
    block: Vec<f32>,
    /// The head's values of every position so far, as f32, loaded once per segment.
    loaded_values: Vec<f32>,
    /// LANES running sums per output element.
    sums: Vec<f32>,
}

/// llama.cpp's attention products (tinyBLAS on AVX2) keep one vector of 8 running sums.
const LANES: usize = 8;

impl HeadAttention {
    /// Attention of head `head` for `n` consecutive tokens of one sequence, the first at
    /// position `start`; token i sees positions `0..=start + i`. Returns n × head_dim.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all of them needed"
    )]
    fn run<'q>(
        &mut self,
        model: &LlamaModel,
        kv: &KvCache,
        layer: usize,
        table: &[u32],
        start: usize,
        n: usize,
        head: usize,
        query: impl Fn(usize) -> &'q [f32],
    ) -> Vec<f32> {
        let c = &model.config;
        let (hd, kvd) = (c.head_dim, c.kv_dim());
        let offset = (head / (c.heads / c.kv_heads)) * hd;
        let ctx = start + n;
        let scale = 1.0 / (hd as f32).sqrt();
        // llama.cpp multiplies an f16 cache by the query converted to f16...
        self.q.clear();
        for i in 0..n {
            self.q.extend(query(i).iter().map(|v| through_f16(*v)));
        }
        self.scores.resize(n * ctx, 0.0);
        self.block.resize(BLOCK_TOKENS * hd, 0.0);
        let blocks = KvCache::blocks_for(ctx);

        for b in 0..blocks {
            let used = (ctx - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            self.load(kv.block(layer, table, b).0, used, kvd, offset, hd);
            for i in 0..n {
                let q = &self.q[i * hd..(i + 1) * hd];
                let visible = (start + i + 1).saturating_sub(b * BLOCK_TOKENS).min(used);
                for t in 0..visible {
                    self.scores[i * ctx + b * BLOCK_TOKENS + t] =
                        dot(q, &self.block[t * hd..(t + 1) * hd]) * scale;
                }
            }
        }
        for i in 0..n {
            let row = &mut self.scores[i * ctx..i * ctx + start + i + 1];
            softmax(row);
            // ...and multiplies the f16 values by the probabilities converted to f16.
            for p in row.iter_mut() {
                *p = through_f16(*p);
            }
        }
        // out_i = Σ_p w_ip · v_p, summed in llama.cpp's order: 8 running sums per output
        // element, position p into sum p mod 8, then reduced as in [`reduce8`].
        let mut out = vec![0f32; n * hd];
        self.sums.resize(LANES * hd, 0.0);
        for i in 0..n {
            self.sums.fill(0.0);
            let last = start + i;
            for b in 0..KvCache::blocks_for(last + 1) {
                let used = (ctx - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
                if self.loaded_values.len() <= b * BLOCK_TOKENS * hd {
                    self.load(kv.block(layer, table, b).1, used, kvd, offset, hd);
                    self.loaded_values
                        .extend_from_slice(&self.block[..used * hd]);
                }
                let visible = (last + 1 - b * BLOCK_TOKENS).min(used);
                for t in 0..visible {
                    let p = b * BLOCK_TOKENS + t;
                    let w = self.scores[i * ctx + p];
                    let v = &self.loaded_values[p * hd..(p + 1) * hd];
                    let sums = &mut self.sums[(p % LANES) * hd..(p % LANES + 1) * hd];
                    for (acc, v) in sums.iter_mut().zip(v) {
                        *acc = v.mul_add(w, *acc);
                    }
                }
            }
            for (d, o) in out[i * hd..(i + 1) * hd].iter_mut().enumerate() {
                *o = reduce8(|lane| self.sums[lane * hd + d]);
            }
        }
        self.loaded_values.clear();
        out
    }

    /// Converts one head's slice of the first `used` tokens of a cache block to f32.
    fn load(&mut self, block: &[u16], used: usize, kvd: usize, offset: usize, hd: usize) {
        for t in 0..used {
            let src: &[f16] = block[t * kvd + offset..][..hd].reinterpret_cast();
            src.convert_to_f32_slice(&mut self.block[t * hd..(t + 1) * hd]);
        }
    }
}

/// A dot product summed in the order of llama.cpp's attention products on AVX2 (tinyBLAS):
/// 8 running sums (element i into sum i mod 8, fused multiply-adds), reduced by
/// [`reduce8`]. The same rounding at every step keeps greedy choices between near-tied
/// tokens the same as llama.cpp's.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let sums = lane_sums(a, b);
    reduce8(|lane| sums[lane])
}

/// Reduces 8 running sums as a horizontal vector sum does: the two halves, then pairs.
fn reduce8(sum: impl Fn(usize) -> f32) -> f32 {
    let t = [
        sum(0) + sum(4),
        sum(1) + sum(5),
        sum(2) + sum(6),
        sum(3) + sum(7),
    ];
    (t[0] + t[2]) + (t[1] + t[3])
}
