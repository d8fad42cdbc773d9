//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): GPT-2, Llama 3, Qwen2, SmolLM2, ….
//!
//! Text is cut by the pre type's regexes ([`super::pre`]), each piece's UTF-8 bytes are
//! mapped to GPT-2's printable alphabet (so every byte is a vocab entry), and the merges are
//! applied by rank within each piece. `tokenizers` runs the regexes (Oniguruma, which has the
//! look-ahead they need) and the merges; special tokens never reach it, they are split off
//! before ([`super::GgufTokenizer::encode`]).

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::pre::PreTokenizer;
use crate::error::EngineError;

/// A byte-level BPE with its pre-tokenizer.
pub(super) struct Bpe {
    inner: Tokenizer,
}

impl Bpe {
    pub(super) fn new(
        tokens: &[String],
        merges: Vec<(String, String)>,
        pre: PreTokenizer,
    ) -> Result<Self, EngineError> {
        // A text appearing twice keeps its last id, as in llama.cpp's `token_to_id`.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| EngineError::Artifact(format!("BPE vocab and merges: {e}")))?;
        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
        for re in pre.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
            steps.push(split.into());
        }
        // The regexes above did the cutting; ByteLevel only maps bytes to GPT-2's alphabet.
        steps.push(ByteLevel::new(false, false, false).into());
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        Ok(Self { inner })
    }

    /// Appends the ids of `text`, which holds no special tokens.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), EngineError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// Splits a GGUF merge `"a b"` as llama.cpp does: at the first space after the first
/// character, so a merge whose left side is itself a space still parses.
pub(super) fn split_merge(merge: &str) -> Option<(String, String)> {
    let first = merge.chars().next()?.len_utf8();
    let at = merge[first..].find(' ')? + first;
    Some((merge[..at].to_owned(), merge[at + 1..].to_owned()))
}

/// The raw bytes of a byte-level token: each char of GPT-2's alphabet is one byte. A char
/// outside the alphabet cannot come from byte-level BPE; it is kept as its UTF-8 rather than
/// failing the whole load.
pub(super) fn token_bytes(text: &str, decoder: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match decoder.get(&c) {
            Some(b) => out.push(*b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// GPT-2's byte ↔ printable-char table, inverted: the char each byte was stored as → the byte.
pub(super) fn byte_decoder() -> HashMap<char, u8> {
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

    #[test]
    fn merges_split_like_llama_cpp() {
        let table = [
            ("Ġ t", Some(("Ġ", "t"))),
            ("a b c", Some(("a", "b c"))),
            // A left side that is a space: the search starts after the first byte.
            ("  x", Some((" ", "x"))),
            ("ab", None),
            ("", None),
        ];
        for (merge, want) in table {
            let got = split_merge(merge);
            let want = want.map(|(a, b)| (a.to_owned(), b.to_owned()));
            assert_eq!(got, want, "{merge:?}");
        }
    }
}
