//! Model hyperparameters from GGUF metadata (`{arch}.block_count` and friends).

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::EngineError;
use crate::kernels::ops::RopeStyle;

/// Architectures this forward pass implements, and what sets them apart.
const ARCHITECTURES: [(&str, RopeStyle, bool); 3] = [
    // (general.architecture, rotary pairing, biases on Q/K/V)
    ("llama", RopeStyle::Interleaved, false),
    ("mistral", RopeStyle::Interleaved, false),
    ("qwen2", RopeStyle::Halves, true),
];

/// The shape of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: String,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    pub qkv_bias: bool,
    /// The context the model was trained for.
    pub trained_context: usize,
}

impl Config {
    /// Reads the configuration; unknown architectures and inconsistent shapes are errors.
    pub fn from_gguf(content: &Content) -> Result<Self, EngineError> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".to_owned());
        let Some(&(_, rope_style, qkv_bias)) = ARCHITECTURES.iter().find(|(a, ..)| *a == arch)
        else {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, ..)| *a).collect();
            return Err(EngineError::Artifact(format!(
                "GGUF architecture `{arch}` is not supported (supported: {})",
                known.join(", ")
            )));
        };
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize, EngineError> {
            md.get(&key(k))
                .and_then(as_usize)
                .ok_or_else(|| EngineError::Artifact(format!("GGUF metadata lacks {}", key(k))))
        };
        let float = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
        let dim = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || dim % heads != 0 {
            return Err(EngineError::Artifact(format!(
                "inconsistent attention shape: {dim} dims, {heads} heads, {kv_heads} KV heads"
            )));
        }
        let head_dim = int("attention.key_length").unwrap_or(dim / heads);
        let rope_dims = int("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(EngineError::Artifact(format!(
                "rope over {rope_dims} of {head_dim} head dimensions is not supported"
            )));
        }
        Ok(Self {
            layers: int("block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim,
            ffn_dim: int("feed_forward_length")?,
            rms_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope_dims,
            rope_style,
            qkv_bias,
            trained_context: int("context_length").unwrap_or(2048),
            architecture: arch,
        })
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the keys (and of the values) of one token.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .ok()
}
