//! Toy vocabularies built as GGUF metadata: broken metadata must be a clear error, and the
//! special-token, space-prefix and decoding rules hold for both kinds. The real vocabs are
//! checked against llama.cpp's own test files in `tests/engine/tokenizer_vocab.rs`.

use super::*;

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).into())).collect())
}

fn metadata(pairs: Vec<(&str, Value)>) -> HashMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A SentencePiece vocab: <unk> <s> </s>, the 256 byte pieces, then a few pieces.
fn spm_tokens() -> Vec<String> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0u8..=255).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["▁", "H", "i", "▁H", "▁Hi", "<tool>"].map(String::from));
    tokens
}

fn spm_metadata() -> HashMap<String, Value> {
    let tokens = spm_tokens();
    let types: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Value::I32(match (i, t.as_str()) {
                (0, _) => TOKEN_TYPE_UNKNOWN,
                (1 | 2, _) => TOKEN_TYPE_CONTROL,
                (_, "<tool>") => TOKEN_TYPE_USER_DEFINED,
                (_, t) if t.starts_with("<0x") => TOKEN_TYPE_BYTE,
                _ => TOKEN_TYPE_NORMAL,
            })
        })
        .collect();
    let scores: Vec<Value> = tokens
        .iter()
        .map(|t| Value::F32(-(t.chars().count() as f32)))
        .collect();
    let texts: Vec<&str> = tokens.iter().map(String::as_str).collect();
    metadata(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&texts)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ])
}

/// A byte-level BPE vocab: GPT-2's 256 byte chars, two merges, one control token.
fn bpe_metadata() -> HashMap<String, Value> {
    let decoder = bpe::byte_decoder();
    let mut alphabet: Vec<(u8, char)> = decoder.iter().map(|(c, b)| (*b, *c)).collect();
    alphabet.sort();
    let mut tokens: Vec<String> = alphabet.iter().map(|(_, c)| c.to_string()).collect();
    tokens.extend(["he", "Ġw", "<|end|>"].map(String::from));
    let mut types = vec![Value::I32(TOKEN_TYPE_NORMAL); tokens.len()];
    types[tokens.len() - 1] = Value::I32(TOKEN_TYPE_CONTROL);
    let texts: Vec<&str> = tokens.iter().map(String::as_str).collect();
    metadata(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strings(&texts)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strings(&["h e", "Ġ w"])),
    ])
}

fn id(tok: &GgufTokenizer, text: &str) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&i| tok.token_text(i) == Some(text))
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

#[test]
fn broken_metadata_is_a_clear_artifact_error() {
    type Edit = fn(&mut HashMap<String, Value>);
    // (what is broken, base vocab is SentencePiece?, edit, words the message must contain)
    let table: Vec<(&str, bool, Edit, &str)> = vec![
        (
            "no model",
            true,
            |m| {
                m.remove("tokenizer.ggml.model");
            },
            "no tokenizer.ggml.model",
        ),
        (
            "unknown model",
            true,
            |m| {
                m.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
            },
            "\"bert\"",
        ),
        (
            "model not a string",
            true,
            |m| {
                m.insert("tokenizer.ggml.model".into(), Value::U32(1));
            },
            "tokenizer.ggml.model is a U32",
        ),
        (
            "no tokens",
            true,
            |m| {
                m.remove("tokenizer.ggml.tokens");
            },
            "no tokenizer.ggml.tokens",
        ),
        (
            "empty tokens",
            false,
            |m| {
                m.insert("tokenizer.ggml.tokens".into(), Value::Array(vec![]));
            },
            "tokenizer.ggml.tokens is empty",
        ),
        (
            "tokens not strings",
            true,
            |m| {
                m.insert(
                    "tokenizer.ggml.tokens".into(),
                    Value::Array(vec![Value::U32(7)]),
                );
            },
            "tokenizer.ggml.tokens[0] is a U32",
        ),
        (
            "token_type shorter than tokens",
            true,
            |m| {
                m.insert(
                    "tokenizer.ggml.token_type".into(),
                    Value::Array(vec![Value::I32(1)]),
                );
            },
            "token_type has 1 entries",
        ),
        (
            "token_type of floats",
            false,
            |m| {
                let Some(Value::Array(types)) = m.get_mut("tokenizer.ggml.token_type") else {
                    unreachable!()
                };
                types[3] = Value::F32(1.0);
            },
            "tokenizer.ggml.token_type[3] is a F32",
        ),
        (
            "SentencePiece without scores",
            true,
            |m| {
                m.remove("tokenizer.ggml.scores");
            },
            "needs tokenizer.ggml.scores",
        ),
        (
            "scores shorter than tokens",
            true,
            |m| {
                m.insert(
                    "tokenizer.ggml.scores".into(),
                    Value::Array(vec![Value::F32(0.0)]),
                );
            },
            "scores has 1 entries",
        ),
        (
            "unknown pre-tokenizer",
            false,
            |m| {
                m.insert(
                    "tokenizer.ggml.pre".into(),
                    Value::String("chatglm-bpe".into()),
                );
            },
            "tokenizer.ggml.pre \"chatglm-bpe\" is not a supported pre-tokenizer",
        ),
        (
            "BPE without merges",
            false,
            |m| {
                m.remove("tokenizer.ggml.merges");
            },
            "no tokenizer.ggml.merges",
        ),
        (
            "merge without a space",
            false,
            |m| {
                m.insert("tokenizer.ggml.merges".into(), strings(&["he"]));
            },
            "bad merge \"he\"",
        ),
        (
            "merge of tokens the vocab lacks",
            false,
            |m| {
                m.insert("tokenizer.ggml.merges".into(), strings(&["x yz"]));
            },
            "BPE vocab and merges",
        ),
        (
            "bos id beyond the vocab",
            true,
            |m| {
                m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1 << 20));
            },
            "bos_token_id is 1048576, beyond",
        ),
        (
            "BOS asked for but not named",
            false,
            |m| {
                m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
            },
            "names no bos_token_id",
        ),
        (
            "add_space_prefix not a bool",
            true,
            |m| {
                m.insert(
                    "tokenizer.ggml.add_space_prefix".into(),
                    Value::String("true".into()),
                );
            },
            "add_space_prefix is a String, not a bool",
        ),
    ];
    for (what, spm, edit, want) in table {
        let mut md = if spm { spm_metadata() } else { bpe_metadata() };
        edit(&mut md);
        match GgufTokenizer::from_metadata(&md) {
            Err(EngineError::Artifact(msg)) => {
                assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}")
            }
            Err(e) => panic!("{what}: not an Artifact error: {e:?}"),
            Ok(_) => panic!("{what}: loaded"),
        }
    }
}

#[test]
fn sentencepiece_prefix_specials_and_decoding() {
    let tok = GgufTokenizer::from_metadata(&spm_metadata()).unwrap();
    let ids = |texts: &[&str]| texts.iter().map(|t| id(&tok, t)).collect::<Vec<_>>();
    // (text, pieces): a space before the text and after every special token, not elsewhere.
    let table: &[(&str, &[&str])] = &[
        ("", &[]),
        ("Hi", &["▁Hi"]),
        (" Hi", &["▁", "▁Hi"]),
        ("Hi Hi", &["▁Hi", "▁Hi"]),
        ("<s>Hi</s>", &["<s>", "▁Hi", "</s>"]),
        ("Hi<tool>Hi", &["▁Hi", "<tool>", "▁Hi"]),
        // No piece for "é": its UTF-8 bytes.
        ("é", &["▁", "<0xC3>", "<0xA9>"]),
    ];
    for (text, pieces) in table {
        assert_eq!(tok.encode(text).unwrap(), ids(pieces), "{text:?}");
    }
    assert_eq!(tok.prompt_bos(), Some(1));
    assert_eq!(tok.token_bytes(id(&tok, "▁Hi")), b" Hi");
    assert_eq!(tok.token_bytes(id(&tok, "<0x0A>")), b"\n");
    assert_eq!(tok.token_bytes(1), b"");
    assert_eq!(tok.token_bytes(id(&tok, "<tool>")), b"<tool>");
    for text in ["Hi", " Hi", "Hi Hi", "é H", "  "] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()), text, "{text:?}");
    }
    // The first token only loses its space; a BOS in front keeps it (llama.cpp does both).
    assert_eq!(tok.decode(&ids(&["<s>", "▁Hi"])), " Hi");

    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    let tok = GgufTokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.encode("Hi").unwrap(), ids(&["H", "i"]));
    assert_eq!(tok.decode(&tok.encode(" Hi").unwrap()), " Hi");
    assert_eq!(tok.prompt_bos(), None);
}

#[test]
fn byte_level_bpe_specials_and_decoding() {
    let tok = GgufTokenizer::from_metadata(&bpe_metadata()).unwrap();
    let ids = |texts: &[&str]| texts.iter().map(|t| id(&tok, t)).collect::<Vec<_>>();
    let table: &[(&str, &[&str])] = &[
        ("hehe w", &["he", "he", "Ġw"]),
        ("the", &["t", "he"]),
        ("he<|end|>he", &["he", "<|end|>", "he"]),
        ("<|end|><|end|>", &["<|end|>", "<|end|>"]),
    ];
    for (text, pieces) in table {
        assert_eq!(tok.encode(text).unwrap(), ids(pieces), "{text:?}");
    }
    assert_eq!(tok.token_bytes(id(&tok, "Ġw")), b" w");
    assert_eq!(tok.token_bytes(id(&tok, "<|end|>")), b"");
    assert_eq!(tok.special_id("<|end|>"), Some(id(&tok, "<|end|>")));
    assert_eq!(tok.prompt_bos(), None);
    for text in [" leading", "tabs\tand\nnewlines  x", "日本語 🚀"] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()), text, "{text:?}");
    }
}

#[test]
fn longer_special_tokens_are_cut_first() {
    let mut md = bpe_metadata();
    let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") else {
        unreachable!()
    };
    tokens.extend([Value::String("<a>".into()), Value::String("<a><b>".into())]);
    let n = tokens.len();
    let Some(Value::Array(types)) = md.get_mut("tokenizer.ggml.token_type") else {
        unreachable!()
    };
    types.extend([
        Value::I32(TOKEN_TYPE_USER_DEFINED),
        Value::I32(TOKEN_TYPE_CONTROL),
    ]);
    let tok = GgufTokenizer::from_metadata(&md).unwrap();
    let (a, ab) = (n as u32 - 2, n as u32 - 1);
    assert_eq!(tok.encode("<a><b><a>").unwrap(), [ab, a]);
    // User-defined tokens decode to their text.
    assert_eq!(tok.decode(&[ab, a]), "<a>");
}
