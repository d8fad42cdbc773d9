//! The embedding model of a replica: a BERT encoder (all-MiniLM-L6-v2) with mean pooling and
//! L2 normalization, as sentence-transformers computes it.
//!
//! The shipped tokenizer.json pads and truncates to 128 tokens; both are turned off: padding
//! is done here per batch with an attention mask, and an input longer than the model's
//! position table is the client's error (a silent truncation would embed a different text).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::EngineError;

/// Inputs run through the encoder together (padded to the longest of them).
const BATCH: usize = 16;

/// A loaded embedding model.
pub struct EmbeddingModel {
    model: BertModel,
    tokenizer: Tokenizer,
    max_positions: usize,
    dimensions: usize,
}

/// Token ids of the inputs of one request.
#[derive(Debug, Clone)]
pub struct TokenizedInputs {
    pub ids: Vec<Vec<u32>>,
}

impl TokenizedInputs {
    /// Total tokens, `[CLS]` and `[SEP]` included: what the request is billed.
    pub fn total_tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

impl EmbeddingModel {
    /// Loads config.json, tokenizer.json and model.safetensors from `dir`. Blocking.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| EngineError::Io { path, source })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| EngineError::Artifact(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            max_positions: config.max_position_embeddings,
            dimensions: config.hidden_size,
        })
    }

    /// The length of every embedding.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Tokenizes and validates the inputs (non-empty, within the position table).
    pub fn tokenize(&self, inputs: &[String]) -> Result<TokenizedInputs, EngineError> {
        let mut ids = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            if text.is_empty() {
                return Err(EngineError::invalid(
                    "input",
                    format!("input[{i}] is an empty string"),
                ));
            }
            let enc = self
                .tokenizer
                .encode_fast(text.as_str(), true)
                .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
            if enc.len() > self.max_positions {
                return Err(EngineError::ContextLengthExceeded(format!(
                    "input[{i}] is {} tokens; this model's maximum is {}",
                    enc.len(),
                    self.max_positions
                )));
            }
            ids.push(enc.get_ids().to_vec());
        }
        Ok(TokenizedInputs { ids })
    }

    /// Embeds tokenized inputs: unit-length vectors, in input order. Blocking, CPU-bound.
    pub fn embed(&self, inputs: &TokenizedInputs) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out = Vec::with_capacity(inputs.ids.len());
        for batch in inputs.ids.chunks(BATCH) {
            out.extend(self.embed_batch(batch)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let device = &self.model.device;
        let len = batch.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for row in batch {
            ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, len - row.len())),
            );
            mask.extend(
                std::iter::repeat_n(1u32, row.len()).chain(std::iter::repeat_n(0, len - row.len())),
            );
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, device)?;
        let mask = Tensor::from_vec(mask, shape, device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (b, len, dim)
        // Mean over the real tokens only.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, dim)
        let counts = mask.sum(1)?; // (b, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}
