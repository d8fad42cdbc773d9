//! The chat model's tokenizer, rebuilt from the GGUF metadata so its ids match llama.cpp's.
//!
//! SmolLM2's tokenizer exists only inside its GGUF (`tokenizer.ggml.*`). It is a GPT-2 style
//! byte-level BPE whose pre-tokenizer splits digits one by one (llama.cpp calls it `smollm`).
//! candle's `TokenizerFromGguf` does not know that pre-tokenizer and gives wrong ids, so we
//! build the `tokenizers` pipeline ourselves: `Sequence[Digits(individual), ByteLevel]`, a BPE
//! model from the tokens and merges, and token types 3 (control) and 4 (user-defined) as
//! special tokens, which are matched in the raw text before pre-tokenization.
//!
//! Decoding does not go through `tokenizers`: every id maps to its raw bytes once, at load, so
//! the streaming detokenizer ([`crate::detok`]) can work on bytes and never split a UTF-8
//! character. Control tokens decode to nothing (llama.cpp does the same unless asked to show
//! special tokens); user-defined tokens decode to their text.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::EngineError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A byte-level BPE tokenizer built from GGUF metadata.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// Raw output bytes of every id; empty for control tokens.
    bytes: Vec<Vec<u8>>,
    /// The text of every token as stored in the GGUF (for special-token lookups).
    tokens: Vec<String>,
    special: HashMap<String, u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` keys of a GGUF file.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, EngineError> {
        let md = &content.metadata;
        let model = string_meta(md, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Artifact(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (gpt2) is supported"
            )));
        }
        let tokens: Vec<String> = array_meta(md, "tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()?;
        let merges: Vec<(String, String)> = array_meta(md, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let m = v.to_string()?;
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| candle_core::Error::Msg(format!("bad merge {m:?}")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(EngineError::Artifact(
                "token_type and tokens differ in length".into(),
            ));
        }

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, false, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let decode_map = byte_decoder();
        let mut special = HashMap::new();
        let mut added = Vec::new();
        let mut bytes = Vec::with_capacity(tokens.len());
        for (id, (text, ty)) in tokens.iter().zip(&types).enumerate() {
            match *ty {
                TOKEN_TYPE_CONTROL => {
                    special.insert(text.clone(), id as u32);
                    added.push(AddedToken::from(text.clone(), true));
                    bytes.push(Vec::new());
                }
                TOKEN_TYPE_USER_DEFINED => {
                    special.insert(text.clone(), id as u32);
                    added.push(AddedToken::from(text.clone(), true));
                    bytes.push(text.as_bytes().to_vec());
                }
                _ => bytes.push(
                    // A char outside the byte alphabet cannot come from byte-level BPE;
                    // keep it as its UTF-8 rather than failing the whole load.
                    text.chars()
                        .flat_map(|c| match decode_map.get(&c) {
                            Some(b) => vec![*b],
                            None => c.to_string().into_bytes(),
                        })
                        .collect(),
                ),
            }
        }
        // Returns how many tokens were new to the vocabulary; all of ours already are in it.
        let _ = inner.add_special_tokens(added);
        Ok(Self {
            inner,
            bytes,
            tokens,
            special,
        })
    }

    /// Encodes text; special tokens in it (like `<|im_start|>`) become their single ids.
    /// No BOS/EOS is added: chat templates write the special tokens they want.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes an id contributes to the output text (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes ids to text (lossy on invalid UTF-8), skipping control tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id))
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a special (control or user-defined) token.
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
}

/// GPT-2's byte ↔ printable-char table, inverted: the char each byte was stored as → the byte.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32).collect();
    printable.extend('¡' as u32..='¬' as u32);
    printable.extend('®' as u32..='ÿ' as u32);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

fn meta<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a gguf_file::Value, EngineError> {
    md.get(key)
        .ok_or_else(|| EngineError::Artifact(format!("GGUF metadata has no {key}")))
}

pub(crate) fn string_meta<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a String, EngineError> {
    Ok(meta(md, key)?.to_string()?)
}

fn array_meta<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a Vec<gguf_file::Value>, EngineError> {
    Ok(meta(md, key)?.to_vec()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_decoder_covers_every_byte_once() {
        let map = byte_decoder();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'A'], b'A');
    }
}
