//! The chat model's tokenizer, rebuilt from the GGUF metadata so its ids match llama.cpp's.
//!
//! A llama-family GGUF carries its tokenizer as metadata (`tokenizer.ggml.*`) and no
//! `tokenizer.json`; the ids a model was trained on are the ones llama.cpp produces from that
//! metadata, so that is what we reproduce, kind by kind:
//! - `gpt2`: byte-level BPE (`bpe`) cut by the pre-tokenizer `tokenizer.ggml.pre` names
//!   (`pre`: SmolLM2, Llama 3, Qwen2, GPT-2, …). candle's `TokenizerFromGguf` ignores the
//!   pre type and gives wrong ids, which is why this module exists.
//! - `llama`: SentencePiece pieces with scores and byte fallback (`spm`: Llama 2, Mistral,
//!   TinyLlama), merged greedily by score as llama.cpp does.
//!
//! Anything else (another model kind, an unknown pre type, missing scores) is refused at
//! load with [`EngineError::Artifact`]: a tokenizer that is merely close would give a model
//! ids it was not trained on, silently.
//!
//! Special tokens — types 3 (control), 4 (user-defined) and 2 (unknown) — are cut out of the
//! raw text first, longest first, as llama.cpp's `tokenize(…, parse_special = true)` does, so
//! a chat template's `<|im_start|>` or `<s>` becomes its single id. [`GgufTokenizer::encode`]
//! adds no BOS/EOS: chat templates write the ones they want (see [`GgufTokenizer::prompt_bos`]
//! for text completions).
//!
//! Decoding does not go through `tokenizers`: every id maps to its raw bytes once, at load, so
//! the streaming detokenizer ([`crate::detok`]) can work on bytes and never split a UTF-8
//! character (a SentencePiece byte piece is one byte of a character). Control tokens decode
//! to nothing (llama.cpp does the same unless asked to show special tokens); user-defined
//! tokens decode to their text.

mod bpe;
mod pre;
mod spm;

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{self, Value};

use crate::error::EngineError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;

/// The tokenization algorithm of a vocab (boxed: each is a kilobyte or two inline, and is
/// built once per model).
enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(Box<spm::Spm>),
}

/// A tokenizer built from GGUF metadata.
pub struct GgufTokenizer {
    model: Model,
    /// Raw output bytes of every id; empty for control tokens.
    bytes: Vec<Vec<u8>>,
    /// The text of every token as stored in the GGUF (for special-token lookups).
    tokens: Vec<String>,
    special: HashMap<String, u32>,
    /// The special tokens in the order they are cut out of text: longest first.
    special_order: Vec<u32>,
    /// SentencePiece's leading space: added before text that starts the input or follows a
    /// special token, and removed again from the first token when decoding.
    add_space_prefix: bool,
    prompt_bos: Option<u32>,
}

/// A piece of the input after special tokens are cut out.
enum Fragment {
    Text(std::ops::Range<usize>),
    Token(u32),
}

// === impl GgufTokenizer ===

impl GgufTokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` keys of a GGUF file.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, EngineError> {
        Self::from_metadata(&content.metadata)
    }

    /// Builds the tokenizer from GGUF metadata (all keys; only `tokenizer.ggml.*` are read).
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, EngineError> {
        let kind = string_meta(md, "tokenizer.ggml.model")?.as_str();
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(artifact("tokenizer.ggml.tokens is empty"));
        }
        let n = tokens.len();
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(v) => array_of(v, "tokenizer.ggml.token_type", "i32", |v| match v {
                Value::I32(t) => Some(*t),
                _ => None,
            })?,
            None => vec![TOKEN_TYPE_NORMAL; n],
        };
        if types.len() != n {
            return Err(artifact(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            )));
        }
        let id_meta = |key: &str| -> Result<Option<u32>, EngineError> {
            match md.get(key) {
                None => Ok(None),
                Some(Value::U32(id)) if (*id as usize) < n => Ok(Some(*id)),
                Some(Value::U32(id)) => {
                    Err(artifact(format!("{key} is {id}, beyond the {n} tokens")))
                }
                Some(v) => Err(artifact(format!(
                    "{key} is a {:?}, not a u32",
                    v.value_type()
                ))),
            }
        };
        let bos = id_meta("tokenizer.ggml.bos_token_id")?;

        let (model, add_bos_default, add_space_prefix_default) = match kind {
            "gpt2" => {
                let pre_name = match md.get("tokenizer.ggml.pre") {
                    Some(_) => Some(string_meta(md, "tokenizer.ggml.pre")?.as_str()),
                    None => None,
                };
                let pre = pre::lookup(pre_name).ok_or_else(|| {
                    artifact(format!(
                        "tokenizer.ggml.pre {:?} is not a supported pre-tokenizer \
                         (supported: {})",
                        pre_name.unwrap_or_default(),
                        pre::SUPPORTED
                    ))
                })?;
                if pre_name.is_none() {
                    tracing::warn!(
                        "GGUF has no tokenizer.ggml.pre; using llama.cpp's default pre-tokenizer"
                    );
                }
                let merges = string_array(md, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        bpe::split_merge(&m).ok_or_else(|| {
                            artifact(format!("bad merge {m:?} in tokenizer.ggml.merges"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let model = Model::Bpe(Box::new(bpe::Bpe::new(&tokens, merges, pre)?));
                (model, pre.add_bos, false)
            }
            "llama" => {
                let scores = match md.get("tokenizer.ggml.scores") {
                    Some(v) => array_of(v, "tokenizer.ggml.scores", "f32", |v| match v {
                        Value::F32(s) => Some(*s),
                        Value::I32(s) => Some(*s as f32),
                        _ => None,
                    })?,
                    None => {
                        return Err(artifact(
                            "tokenizer.ggml.model \"llama\" needs tokenizer.ggml.scores, \
                             which is missing",
                        ));
                    }
                };
                if scores.len() != n {
                    return Err(artifact(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        scores.len()
                    )));
                }
                // llama.cpp's SentencePiece defaults: <unk> 0, <s> 1.
                let unk = id_meta("tokenizer.ggml.unknown_token_id")?.or(Some(0));
                (
                    Model::Spm(Box::new(spm::Spm::new(&tokens, scores, unk))),
                    true,
                    true,
                )
            }
            other => {
                return Err(artifact(format!(
                    "tokenizer.ggml.model is {other:?}; supported: \"gpt2\" (byte-level BPE) \
                     and \"llama\" (SentencePiece)"
                )));
            }
        };
        let add_space_prefix =
            bool_meta(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(add_space_prefix_default);
        let add_bos = bool_meta(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
        let bos = match (&model, bos) {
            (Model::Spm(_), None) => Some(1u32).filter(|&id| (id as usize) < n),
            (_, bos) => bos,
        };
        let prompt_bos = match (add_bos, bos) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(artifact(
                    "tokenizer.ggml.add_bos_token is set but the GGUF names no bos_token_id",
                ));
            }
        };

        let decoder = bpe::byte_decoder();
        let mut special = HashMap::new();
        let mut bytes = Vec::with_capacity(n);
        for (id, (text, &ty)) in tokens.iter().zip(&types).enumerate() {
            if matches!(
                ty,
                TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
            ) && !text.is_empty()
            {
                special.insert(text.clone(), id as u32);
            }
            bytes.push(match (ty, &model) {
                (TOKEN_TYPE_USER_DEFINED, _) => text.as_bytes().to_vec(),
                (TOKEN_TYPE_NORMAL, Model::Bpe(_)) => bpe::token_bytes(text, &decoder),
                (TOKEN_TYPE_NORMAL, Model::Spm(_)) => text.replace(spm::SPACE, " ").into_bytes(),
                (TOKEN_TYPE_BYTE, Model::Bpe(_)) => bpe::token_bytes(text, &decoder),
                (TOKEN_TYPE_BYTE, Model::Spm(_)) => {
                    spm::piece_byte(text).map(|b| vec![b]).unwrap_or_default()
                }
                // Control, unknown, unused and undefined tokens show nothing (llama.cpp's
                // `token_to_piece` without `special`).
                _ => Vec::new(),
            });
        }
        let mut special_order: Vec<u32> = special.values().copied().collect();
        special_order.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));

        Ok(Self {
            model,
            bytes,
            tokens,
            special,
            special_order,
            add_space_prefix,
            prompt_bos,
        })
    }

    /// Encodes text; special tokens in it (like `<|im_start|>`) become their single ids.
    /// No BOS/EOS is added: chat templates write the special tokens they want.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut out = Vec::new();
        // SentencePiece text starts with a space after the input's start and after every
        // special token (llama.cpp's `is_prev_special`), as the original tokenizer saw it.
        let mut after_special = true;
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(range) => {
                    let piece = &text[range];
                    match &self.model {
                        Model::Bpe(bpe) => bpe.encode(piece, &mut out)?,
                        Model::Spm(spm) => {
                            let prefix = if self.add_space_prefix && after_special {
                                spm::SPACE
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{}", piece.replace(' ', spm::SPACE));
                            spm.encode(&escaped, &mut out)?;
                        }
                    }
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// The BOS id to put before a text prompt of `/v1/completions`, when the vocab asks for
    /// one (`tokenizer.ggml.add_bos_token`, by default true for SentencePiece and Llama 3).
    ///
    /// Chat prompts do not get it: llama-cpp-python's chat handler for GGUF templates
    /// tokenizes the rendered prompt without adding BOS (`add_bos=False`, the template is
    /// trusted to write `{{ bos_token }}`, as Llama 2's and Mistral's do), and we match it.
    /// For a text completion both llama-cpp-python and llama-server prepend BOS when the vocab
    /// asks for it; token-id prompts are taken as given.
    pub fn prompt_bos(&self) -> Option<u32> {
        self.prompt_bos
    }

    /// The bytes an id contributes to the output text (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes ids to text (lossy on invalid UTF-8), skipping control tokens, as
    /// `llama_detokenize` without special tokens does: with a SentencePiece space prefix the
    /// first token loses one leading space, so `decode(encode(text)) == text`. (Streaming
    /// output keeps every token's bytes, as llama-server's per-token pieces do.)
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.token_bytes(id);
            match piece.strip_prefix(b" ") {
                Some(rest) if i == 0 && self.add_space_prefix => bytes.extend_from_slice(rest),
                _ => bytes.extend_from_slice(piece),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a special (control, user-defined or unknown) token.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.special.get(text).copied()
    }

    /// The GGUF text of a token, e.g. `<|im_end|>` or `Ġthe`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Cuts special tokens out of `text`, longest token first, each everywhere it occurs in
    /// what is still text (llama.cpp's `tokenizer_st_partition`).
    fn partition(&self, text: &str) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0..text.len()));
        for &id in &self.special_order {
            let needle = self.tokens[id as usize].as_str();
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut start = range.start;
                while let Some(at) = text[start..range.end].find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(start..start + at));
                    }
                    next.push(Fragment::Token(id));
                    start += at + needle.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            fragments = next;
        }
        fragments
    }
}

// === GGUF metadata helpers ===
//
// Our own messages name the key and the type found: candle's conversion errors print the
// whole value, which for a token array is megabytes.

fn artifact(message: impl Into<String>) -> EngineError {
    EngineError::Artifact(message.into())
}

fn meta<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, EngineError> {
    md.get(key)
        .ok_or_else(|| artifact(format!("GGUF metadata has no {key}")))
}

pub(crate) fn string_meta<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<&'a String, EngineError> {
    match meta(md, key)? {
        Value::String(s) => Ok(s),
        v => Err(artifact(format!(
            "{key} is a {:?}, not a string",
            v.value_type()
        ))),
    }
}

fn bool_meta(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>, EngineError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(artifact(format!(
            "{key} is a {:?}, not a bool",
            v.value_type()
        ))),
    }
}

/// An array value whose every element `f` accepts.
fn array_of<T>(
    value: &Value,
    key: &str,
    what: &str,
    f: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, EngineError> {
    let Value::Array(items) = value else {
        return Err(artifact(format!(
            "{key} is a {:?}, not an array",
            value.value_type()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            f(v).ok_or_else(|| {
                artifact(format!(
                    "{key}[{i}] is a {:?}, not a {what}",
                    v.value_type()
                ))
            })
        })
        .collect()
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, EngineError> {
    array_of(meta(md, key)?, key, "string", |v| match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
