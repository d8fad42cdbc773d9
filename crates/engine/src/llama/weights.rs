//! The weights of a llama-family GGUF, in the form the forward pass computes on.
//!
//! Q4_1, Q8_0 and F32 matrices use our kernels ([`crate::kernels`]); F16/BF16 become F32;
//! every other format (the k-quants, Q4_0, Q5_x…) stays a candle `QMatMul`, correct but
//! without our batched kernels. Q, K and V are stacked into one matrix, as are the gate and
//! up projections, when their formats agree: one pass over the batch instead of three.

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::config::Config;
use crate::error::EngineError;
use crate::kernels::matmul::{Workspace, matmul};
use crate::kernels::ops::Rope;
use crate::kernels::{QMatrix, WeightFormat};

/// A weight matrix: ours, or candle's for formats we have no kernel for.
pub enum Linear {
    Own(QMatrix),
    Candle { matmul: QMatMul, rows: usize },
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Own(m) => m.rows(),
            Linear::Candle { rows, .. } => *rows,
        }
    }

    /// `out = x · Wᵀ` for `x` of n rows.
    pub fn forward(
        &self,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<(), EngineError> {
        match self {
            Linear::Own(m) => {
                matmul(m, x, out, ws);
                Ok(())
            }
            Linear::Candle { matmul, .. } => {
                let input = Tensor::from_slice(x, (x.len() / cols, cols), &Device::Cpu)?;
                let y = matmul.forward(&input)?.flatten_all()?.to_vec1::<f32>()?;
                out.copy_from_slice(&y);
                Ok(())
            }
        }
    }
}

/// One or more matrices applied to the same input, outputs side by side.
pub struct Projection {
    parts: Vec<Linear>,
    widths: Vec<usize>,
}

impl Projection {
    fn new(parts: Vec<Linear>) -> Self {
        let all_own = parts.iter().all(|p| matches!(p, Linear::Own(_)));
        let widths: Vec<usize> = parts.iter().map(Linear::rows).collect();
        if all_own && parts.len() > 1 {
            let owned: Vec<QMatrix> = parts
                .iter()
                .filter_map(|p| match p {
                    Linear::Own(m) => Some(m.clone()),
                    Linear::Candle { .. } => None,
                })
                .collect();
            if let Some(stacked) = QMatrix::stack(owned) {
                return Self {
                    widths: vec![stacked.rows()],
                    parts: vec![Linear::Own(stacked)],
                };
            }
        }
        Self { parts, widths }
    }

    /// Total output width.
    pub fn width(&self) -> usize {
        self.widths.iter().sum()
    }

    /// `out` (n rows of [`Self::width`]) = the parts applied to `x`, side by side.
    pub fn forward(
        &self,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        scratch: &mut ProjectionScratch,
    ) -> Result<(), EngineError> {
        if let [only] = self.parts.as_slice() {
            return only.forward(x, cols, out, &mut scratch.ws);
        }
        let n = x.len() / cols;
        let total = self.width();
        let mut offset = 0;
        for (part, &w) in self.parts.iter().zip(&self.widths) {
            scratch.part.resize(n * w, 0.0);
            part.forward(x, cols, &mut scratch.part, &mut scratch.ws)?;
            for (row, src) in scratch.part.chunks_exact(w).enumerate() {
                out[row * total + offset..row * total + offset + w].copy_from_slice(src);
            }
            offset += w;
        }
        Ok(())
    }
}

/// Buffers a projection reuses between calls.
#[derive(Debug)]
pub struct ProjectionScratch {
    pub ws: Workspace,
    part: Vec<f32>,
}

impl ProjectionScratch {
    pub fn new(ws: Workspace) -> Self {
        Self {
            ws,
            part: Vec::new(),
        }
    }
}

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Q, K, V side by side.
    pub qkv: Projection,
    /// Biases of Q, K, V side by side (qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    pub attn_output: Linear,
    pub ffn_norm: Vec<f32>,
    /// Gate and up side by side.
    pub gate_up: Projection,
    pub down: Linear,
}

/// A loaded llama-family model.
pub struct LlamaModel {
    pub config: Config,
    pub embeddings: QMatrix,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    pub output: Linear,
    pub rope: Rope,
    pub vocab: usize,
}

impl LlamaModel {
    /// Reads every tensor of `content` from `file`; `context` bounds the rotary tables.
    pub fn from_gguf(
        content: &Content,
        file: &mut File,
        context: usize,
    ) -> Result<Self, EngineError> {
        let config = Config::from_gguf(content)?;
        let mut tensor = |name: &str| -> Result<QTensor, EngineError> {
            if !content.tensor_infos.contains_key(name) {
                return Err(EngineError::Artifact(format!("GGUF lacks tensor {name}")));
            }
            Ok(content.tensor(file, name, &Device::Cpu)?)
        };
        let embeddings = table(tensor("token_embd.weight")?)?;
        let vocab = embeddings.rows();
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => linear(tensor("output.weight")?)?,
            // Tied to the embeddings (SmolLM2 has no output.weight).
            false => linear(tensor("token_embd.weight")?)?,
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut t = |suffix: &str| tensor(&format!("blk.{i}.{suffix}"));
            let qkv_bias = if config.qkv_bias {
                let mut bias = vector(t("attn_q.bias")?)?;
                bias.extend(vector(t("attn_k.bias")?)?);
                bias.extend(vector(t("attn_v.bias")?)?);
                Some(bias)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(t("attn_norm.weight")?)?,
                qkv: Projection::new(vec![
                    linear(t("attn_q.weight")?)?,
                    linear(t("attn_k.weight")?)?,
                    linear(t("attn_v.weight")?)?,
                ]),
                qkv_bias,
                attn_output: linear(t("attn_output.weight")?)?,
                ffn_norm: vector(t("ffn_norm.weight")?)?,
                gate_up: Projection::new(vec![
                    linear(t("ffn_gate.weight")?)?,
                    linear(t("ffn_up.weight")?)?,
                ]),
                down: linear(t("ffn_down.weight")?)?,
            });
        }
        let output_norm = vector(tensor("output_norm.weight")?)?;
        check_shapes(&config, &layers, &embeddings, &output_norm)?;
        let rope = Rope::new(
            config.rope_style,
            config.rope_dims,
            config.rope_base,
            context,
        );
        Ok(Self {
            config,
            embeddings,
            layers,
            output_norm,
            output,
            rope,
            vocab,
        })
    }
}

fn check_shapes(
    c: &Config,
    layers: &[Layer],
    embeddings: &QMatrix,
    output_norm: &[f32],
) -> Result<(), EngineError> {
    let bad = |what: &str| Err(EngineError::Artifact(format!("GGUF tensor shapes: {what}")));
    if embeddings.cols() != c.dim || output_norm.len() != c.dim {
        return bad("embedding width differs from embedding_length");
    }
    for layer in layers {
        if layer.qkv.width() != c.q_dim() + 2 * c.kv_dim() {
            return bad("attention projections do not match the head counts");
        }
        if layer.gate_up.width() != 2 * c.ffn_dim || layer.attn_norm.len() != c.dim {
            return bad("feed-forward projections do not match feed_forward_length");
        }
        if layer
            .qkv_bias
            .as_ref()
            .is_some_and(|b| b.len() != layer.qkv.width())
        {
            return bad("attention biases do not match the projections");
        }
    }
    Ok(())
}

/// A 1-D tensor as floats.
fn vector(t: QTensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// A matrix for our kernels if we have one for its format, else candle's.
fn linear(t: QTensor) -> Result<Linear, EngineError> {
    let (rows, _) = t.shape().dims2()?;
    match own(&t)? {
        Some(m) => Ok(Linear::Own(m)),
        None => Ok(Linear::Candle {
            matmul: QMatMul::from_qtensor(t)?,
            rows,
        }),
    }
}

/// A matrix whose rows we can read one by one (the embedding table): ours, or as F32.
fn table(t: QTensor) -> Result<QMatrix, EngineError> {
    match own(&t)? {
        Some(m) => Ok(m),
        None => as_f32(&t),
    }
}

fn own(t: &QTensor) -> Result<Option<QMatrix>, EngineError> {
    let (rows, cols) = t.shape().dims2()?;
    let format = match t.dtype() {
        GgmlDType::Q4_1 => WeightFormat::Q4_1,
        GgmlDType::Q8_0 => WeightFormat::Q8_0,
        GgmlDType::F32 => WeightFormat::F32,
        GgmlDType::F16 | GgmlDType::BF16 => return as_f32(t).map(Some),
        _ => return Ok(None),
    };
    let data = t.data()?.into_owned();
    QMatrix::new(format, rows, cols, data)
        .map(Some)
        .map_err(EngineError::Artifact)
}

fn as_f32(t: &QTensor) -> Result<QMatrix, EngineError> {
    let (rows, cols) = t.shape().dims2()?;
    let values = t
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    QMatrix::new(WeightFormat::F32, rows, cols, data).map_err(EngineError::Artifact)
}
