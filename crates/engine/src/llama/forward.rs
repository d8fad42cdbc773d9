//! The batched forward pass: any mix of prefill chunks and decode tokens from many
//! sequences in one call, each token attending to its own sequence's cache only.
//!
//! Every matrix product runs once over all tokens of the step (that is the batching); the
//! rest is per token and independent of the other tokens, so a sequence's logits are the
//! same whatever else shares its step and however its prompt was split into chunks.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;

use super::kv::{BLOCK_TOKENS, KvCache};
use super::weights::{LlamaModel, ProjectionScratch};
use crate::error::EngineError;
use crate::kernels::ops::{add_assign, rms_norm, silu_mul, softmax};
use crate::kernels::quant::through_f16;

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

/// Buffers reused from step to step.
#[derive(Debug, Default)]
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
            let kv_ref: &KvCache = kv;
            s.attn
                .par_chunks_mut(qd)
                .zip(s.qkv.par_chunks(width))
                .enumerate()
                .for_each_init(Attention::default, |a, (t, (out, row))| {
                    let table = step.tables[step.seq_of[t]];
                    a.attend(self, kv_ref, l, table, step.positions[t], &row[..qd], out);
                });
            layer.attn_output.forward(
                &s.attn,
                qd,
                &mut s.o,
                &mut s.proj.acts,
                &mut s.proj.transposed,
            )?;
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
            layer.down.forward(
                &s.act,
                ffn,
                &mut s.o,
                &mut s.proj.acts,
                &mut s.proj.transposed,
            )?;
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
        self.output.forward(
            &s.last,
            dim,
            &mut s.logits,
            &mut s.proj.acts,
            &mut s.proj.transposed,
        )?;
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

/// Per-thread buffers of the attention of one token.
#[derive(Default)]
struct Attention {
    q: Vec<f32>,
    scores: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl Attention {
    /// Causal attention of the token at `pos` over positions `0..=pos` of its sequence.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all of them needed"
    )]
    fn attend(
        &mut self,
        model: &LlamaModel,
        kv: &KvCache,
        layer: usize,
        table: &[u32],
        pos: usize,
        q: &[f32],
        out: &mut [f32],
    ) {
        let c = &model.config;
        let (hd, kvd, heads) = (c.head_dim, c.kv_dim(), c.heads);
        let group = heads / c.kv_heads;
        let n = pos + 1;
        let scale = 1.0 / (hd as f32).sqrt();
        // llama.cpp multiplies an f16 cache by the query converted to f16.
        self.q.clear();
        self.q.extend(q.iter().map(|v| through_f16(*v)));
        self.scores.resize(heads * n, 0.0);
        self.keys.resize(BLOCK_TOKENS * kvd, 0.0);
        self.values.resize(BLOCK_TOKENS * kvd, 0.0);

        let blocks = KvCache::blocks_for(n);
        for b in 0..blocks {
            let (k, _) = kv.block(layer, table, b);
            let used = (n - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            let k: &[f16] = k[..used * kvd].reinterpret_cast();
            k.convert_to_f32_slice(&mut self.keys[..used * kvd]);
            for t in 0..used {
                let p = b * BLOCK_TOKENS + t;
                for h in 0..heads {
                    let key = &self.keys[t * kvd + (h / group) * hd..][..hd];
                    let dot: f32 = self.q[h * hd..(h + 1) * hd]
                        .iter()
                        .zip(key)
                        .map(|(a, b)| a * b)
                        .sum();
                    self.scores[h * n + p] = dot * scale;
                }
            }
        }
        for h in 0..heads {
            softmax(&mut self.scores[h * n..(h + 1) * n]);
        }
        // ...and multiplies the f16 values by the probabilities converted to f16.
        for p in self.scores.iter_mut() {
            *p = through_f16(*p);
        }
        out.fill(0.0);
        for b in 0..blocks {
            let (_, v) = kv.block(layer, table, b);
            let used = (n - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
            let v: &[f16] = v[..used * kvd].reinterpret_cast();
            v.convert_to_f32_slice(&mut self.values[..used * kvd]);
            for t in 0..used {
                let p = b * BLOCK_TOKENS + t;
                for h in 0..heads {
                    let w = self.scores[h * n + p];
                    let value = &self.values[t * kvd + (h / group) * hd..][..hd];
                    for (o, v) in out[h * hd..(h + 1) * hd].iter_mut().zip(value) {
                        *o += w * v;
                    }
                }
            }
        }
    }
}
