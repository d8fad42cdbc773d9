//! Our GGUF tokenizer against llama.cpp's own tokenizer tests: for each vocab-only GGUF of
//! llama.cpp's `models/` (`ggml-vocab-NAME.gguf`), every input of `NAME.gguf.inp` must give
//! exactly the ids of `NAME.gguf.out`, and decode back to itself.
//!
//! llama.cpp's `test-tokenizer-0` makes those ids with `common_tokenize(ctx, text,
//! add_special = false, parse_special = false)`: no BOS, and for SentencePiece the leading
//! space prefix applied. The inputs contain no special-token text, so our `encode` (which
//! parses special tokens) sees the same thing. The files come from the llama-cpp-python sdist
//! through `scripts/fetch-vocabs`.

use std::fs::File;

use candle_core::quantized::gguf_file;
use wattmesh_engine::tokenizer::GgufTokenizer;

use crate::common::vocab_file;

/// llama.cpp's separator between two inputs of a `.inp` file.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// The inputs of a `.inp` file, cut as `test-tokenizer-0.cpp` cuts them.
fn inputs(raw: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

/// The expected ids of a `.out` file: one line per input, ids separated by spaces.
fn outputs(raw: &str) -> Vec<Vec<u32>> {
    raw.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect()
        })
        .collect()
}

fn load(name: &str) -> GgufTokenizer {
    let path = vocab_file(&format!("ggml-vocab-{name}.gguf"));
    let content = gguf_file::Content::read(&mut File::open(&path).unwrap()).unwrap();
    GgufTokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks every case of one vocab; reports all failures at once.
fn check(name: &str, prompt_bos: Option<u32>) {
    let tok = load(name);
    let read = |ext: &str| {
        std::fs::read_to_string(vocab_file(&format!("ggml-vocab-{name}.gguf.{ext}"))).unwrap()
    };
    let (inp, out) = (read("inp"), read("out"));
    let (inputs, outputs) = (inputs(&inp), outputs(&out));
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: .inp and .out disagree"
    );
    assert!(inputs.len() > 30, "{name}: only {} cases", inputs.len());

    let mut failures = Vec::new();
    for (text, want) in inputs.iter().zip(&outputs) {
        let got = tok.encode(text).unwrap();
        if got != *want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        let back = tok.decode(&got);
        if back != *text {
            failures.push(format!("{text:?} decodes back to {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
    assert_eq!(tok.prompt_bos(), prompt_bos, "{name}: BOS for text prompts");
}

// SentencePiece (`tokenizer.ggml.model = "llama"`).

#[test]
fn llama_spm() {
    check("llama-spm", Some(1));
}

#[test]
fn phi_3() {
    check("phi-3", Some(1));
}

// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), by pre-tokenizer.

#[test]
fn llama_bpe() {
    check("llama-bpe", Some(128000));
}

#[test]
fn qwen2() {
    check("qwen2", None);
}

#[test]
fn qwen35() {
    check("qwen35", None);
}

#[test]
fn gpt_2() {
    check("gpt-2", None);
}

#[test]
fn mpt() {
    check("mpt", None);
}

#[test]
fn starcoder() {
    check("starcoder", None);
}

#[test]
fn refact() {
    check("refact", None);
}

#[test]
fn command_r() {
    check("command-r", Some(5));
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm", Some(100000));
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder", Some(32013));
}

#[test]
fn falcon() {
    check("falcon", None);
}

/// Chat-shaped prompts with special tokens, which llama.cpp's own inputs lack: our `encode`
/// must give llama.cpp's `tokenize(parse_special = true)` ids, and a text prompt with
/// `prompt_bos` first its `add_special = true` ids (`bench/reference/special_tokens.py`).
#[test]
fn special_tokens_match_llama_cpp() {
    #[derive(serde::Deserialize)]
    struct Reference {
        vocabs: std::collections::BTreeMap<String, Vec<Case>>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        ids_bos: Vec<u32>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/llama_cpp_special_tokens.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(reference.vocabs.len() >= 3);
    for (name, cases) in &reference.vocabs {
        let tok = load(name);
        for case in cases {
            let ids = tok.encode(&case.text).unwrap();
            assert_eq!(ids, case.ids, "{name}: {:?}", case.text);
            let with_bos: Vec<u32> = tok.prompt_bos().into_iter().chain(ids).collect();
            assert_eq!(with_bos, case.ids_bos, "{name}: {:?} with BOS", case.text);
        }
    }
}

#[test]
fn inputs_are_cut_like_llama_cpp() {
    assert_eq!(inputs(""), Vec::<&str>::new());
    assert_eq!(inputs("a"), ["a"]);
    assert_eq!(inputs("a\n__ggml_vocab_test__\n"), ["a"]);
    assert_eq!(
        inputs("\n__ggml_vocab_test__\n\n\n__ggml_vocab_test__\nb"),
        ["", "\n", "b"]
    );
    assert_eq!(outputs(" 1 2\n\n 3\n"), [vec![1, 2], vec![], vec![3]]);
}
