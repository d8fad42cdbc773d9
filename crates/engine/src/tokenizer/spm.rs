//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`): Llama 2, Mistral,
//! TinyLlama, ….
//!
//! The GGUF keeps SentencePiece's pieces with a score each (`tokenizer.ggml.scores`), spaces
//! written as `▁`, and 256 byte pieces `<0x00>`..`<0xFF>`. llama.cpp does not run
//! SentencePiece's unigram search; it merges greedily, and so must we to get its ids: start
//! from the characters, repeatedly merge the adjacent pair whose concatenation is a piece
//! with the highest score (the leftmost pair on a tie), and stop when no adjacent pair forms
//! a piece. A final symbol that is no piece (a character the vocab lacks) becomes its UTF-8
//! bytes' byte pieces.
//!
//! The caller ([`super::GgufTokenizer::encode`]) adds the leading space and escapes spaces to
//! `▁` first; this module sees text exactly as the vocab spells it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::error::EngineError;

/// SentencePiece's visible space.
pub(super) const SPACE: &str = "\u{2581}";

/// A piece vocabulary with scores.
pub(super) struct Spm {
    /// Every token's text → id, as llama.cpp's `text_to_token` sees them (any token type).
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The token of each byte: `<0xNN>`, else the one-byte text itself.
    byte_ids: [Option<u32>; 256],
    /// Used for a byte that has no token at all (a vocab without byte fallback).
    unk: Option<u32>,
}

/// One symbol of the text being merged: a byte range, linked to its live neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// The merged length when queued; a symbol that changed since makes the entry stale.
    len: usize,
}

impl Ord for Bigram {
    /// Higher score first; on a tie the leftmost pair (llama.cpp's `llm_bigram_spm`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Spm {
    pub(super) fn new(tokens: &[String], scores: Vec<f32>, unk: Option<u32>) -> Self {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let byte_ids = std::array::from_fn(|b| {
            let b = b as u8;
            ids.get(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    let single = [b];
                    std::str::from_utf8(&single).ok().and_then(|s| ids.get(s))
                })
                .copied()
        });
        Self {
            ids,
            scores,
            byte_ids,
            unk,
        }
    }

    /// Appends the ids of `text` (already `▁`-escaped, with no special tokens in it).
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), EngineError> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() {
            self.push_bigram(text, &symbols, &mut queue, Some(right - 1), Some(right));
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            // One side was merged away or grew since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.left].next = r.next;
            symbols[bigram.right].len = 0;
            if let Some(next) = r.next {
                symbols[next].prev = Some(bigram.left);
            }
            self.push_bigram(text, &symbols, &mut queue, l.prev, Some(bigram.left));
            self.push_bigram(text, &symbols, &mut queue, Some(bigram.left), r.next);
        }

        let mut at = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        out.push(self.byte_id(b)?);
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }

    /// Queues the merge of `left` and `right` if their concatenation is a piece.
    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        let Some(&id) = self.ids.get(&text[start..start + len]) else {
            return;
        };
        queue.push(Bigram {
            left,
            right,
            score: self.scores.get(id as usize).copied().unwrap_or(0.0),
            len,
        });
    }

    fn byte_id(&self, b: u8) -> Result<u32, EngineError> {
        self.byte_ids[b as usize].or(self.unk).ok_or_else(|| {
            EngineError::Tokenizer(format!(
                "byte 0x{b:02X} has no token and the vocab has no unknown token"
            ))
        })
    }
}

/// The byte of a byte piece `<0xNN>`.
pub(super) fn piece_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocab: bytes for fallback, a few pieces with scores chosen to test the order.
    fn toy() -> (Spm, Vec<String>) {
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        tokens.extend((0u8..=255).map(|b| format!("<0x{b:02X}>")));
        let pieces = [
            ("▁", -1.0),
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("▁a", -2.0),
            ("ab", -3.0),
            ("bc", -0.5),
            ("▁ab", -4.0),
            ("abc", -5.0),
            ("aa", -1.5),
        ];
        let mut scores = vec![0.0; tokens.len()];
        for (text, score) in pieces {
            tokens.push(text.into());
            scores.push(score);
        }
        (Spm::new(&tokens, scores, Some(0)), tokens)
    }

    fn texts(tokens: &[String], ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| tokens[i as usize].clone()).collect()
    }

    #[test]
    fn merges_by_score_then_leftmost() {
        let (spm, tokens) = toy();
        // (escaped input, pieces)
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            ("a", &["a"]),
            // "bc" (-0.5) beats "▁a" (-2) and "ab" (-3); then "▁a"+"bc" is no piece.
            ("▁abc", &["▁a", "bc"]),
            // Without "c", "▁a" (-2) is merged before "ab" (-3): "▁ab" comes from ▁a + b.
            ("▁ab", &["▁ab"]),
            // Equal scores: the leftmost pair merges first.
            ("aaa", &["aa", "a"]),
            // A character the vocab lacks falls back to its UTF-8 bytes.
            ("é", &["<0xC3>", "<0xA9>"]),
        ];
        for (text, want) in table {
            let mut out = Vec::new();
            spm.encode(text, &mut out).unwrap();
            assert_eq!(texts(&tokens, &out), *want, "{text:?}");
        }
    }

    #[test]
    fn missing_byte_pieces_use_unk_or_fail() {
        let tokens: Vec<String> = vec!["<unk>".into(), "a".into()];
        let spm = Spm::new(&tokens, vec![0.0, 0.0], Some(0));
        let mut out = Vec::new();
        spm.encode("aé", &mut out).unwrap();
        assert_eq!(out, [1, 0, 0]);
        let spm = Spm::new(&tokens, vec![0.0, 0.0], None);
        let err = spm.encode("é", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("0xC3"), "{err}");
    }

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(piece_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(piece_byte("<0xff>"), Some(0xFF));
        assert_eq!(piece_byte("<0x1>"), None);
        assert_eq!(piece_byte("0x0A"), None);
    }
}
