//! Byte-level BPE pre-tokenizers, chosen by the GGUF's `tokenizer.ggml.pre`.
//!
//! A GPT-2 style BPE never merges across the pieces its pre-tokenizer cut, so the same vocab
//! and merges give different ids under different pre-tokenizers: the pre type is part of the
//! tokenizer, and guessing it gives plausible but wrong ids. llama.cpp names each model
//! family's pre-tokenizer and states it as a list of regexes applied one after the other:
//! each regex cuts every piece the previous ones left into its matches and the text between
//! them (nothing is dropped). The regexes below are llama.cpp's (`llm_tokenizer_bpe`), run
//! by Oniguruma through `tokenizers`' `Split`, which cuts the same way (`Isolated`).
//!
//! Only the pre types listed in [`lookup`] are supported; any other is refused at load
//! rather than tokenized with a regex that is merely close.

/// GPT-2's regex as llama.cpp writes it (no trailing `|\s+`: llama.cpp keeps unmatched text
/// as its own piece, which has the same effect).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex; llama.cpp spells out the case-insensitive contractions (`(?i:…)`).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with digits one by one.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's: Qwen2's with combining marks kept inside words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Punctuation runs, split off first by llama.cpp's `default` and `falcon` pre types.
const PUNCT_RUNS: &str = r"[\p{P}\$\+<=>\^~\|]+";

/// DeepSeek LLM's letters: Latin, Greek, Cyrillic, Armenian, Georgian, … as explicit ranges.
const DEEPSEEK_LLM_LETTERS: &str = "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

/// CJK ideographs and Hangul, kept together by the DeepSeek pre types.
const DEEPSEEK_CJK: &str = "[一-龥ࠀ-一가-퟿]+";

/// How one pre type cuts text, and the flags llama.cpp ties to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PreTokenizer {
    /// Applied in order, each to the pieces the previous ones left.
    pub regexes: &'static [&'static str],
    /// A piece that is a whole vocab entry is taken as is, without merging (Llama 3's
    /// tokenizer.json sets `ignore_merges`; its merges cannot always rebuild such words).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the GGUF does not say.
    pub add_bos: bool,
}

const fn plain(regexes: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer {
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` value; `None` for one we do not implement.
/// A GGUF without the key gets llama.cpp's `default` (llama.cpp warns that quality suffers).
pub(super) fn lookup(pre: Option<&str>) -> Option<PreTokenizer> {
    let Some(pre) = pre else {
        return Some(plain(&[PUNCT_RUNS, GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]));
    };
    Some(match pre {
        "default" => plain(&[PUNCT_RUNS, GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreTokenizer {
            regexes: &[LLAMA3],
            ignore_merges: true,
            add_bos: true,
        },
        "dbrx" | "smaug-bpe" => plain(&[LLAMA3]),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => plain(&[QWEN2]),
        "qwen35" => plain(&[QWEN35]),
        "gpt-2" | "phi-2" | "mpt" | "olmo" => plain(&[GPT2]),
        // Digits one by one, then GPT-2 (SmolLM's and StarCoder's).
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" => plain(&[r"\p{N}", GPT2]),
        "falcon" => plain(&[PUNCT_RUNS, GPT2, "[0-9][0-9][0-9]"]),
        "deepseek-llm" => plain(&[
            "[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ]),
        "deepseek-coder" => plain(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, r"\p{N}"]),
        _ => return None,
    })
}

/// The pre types [`lookup`] knows, for error messages (and the test that they all compile).
pub(super) const SUPPORTED: &str = "default, llama3, llama-v3, llama-bpe, falcon3, pixtral, \
     dbrx, smaug-bpe, qwen2, deepseek-r1-qwen, stablelm2, qwen35, gpt-2, phi-2, mpt, olmo, \
     starcoder, refact, command-r, smollm, codeshell, falcon, deepseek-llm, deepseek-coder";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_pre_type_exists_and_compiles_in_oniguruma() {
        for name in SUPPORTED.split(", ") {
            let pre = lookup(Some(name)).unwrap_or_else(|| panic!("{name} is listed"));
            for re in pre.regexes {
                assert!(onig_compiles(re), "{name}: {re}");
            }
        }
        assert!(lookup(None).is_some());
        assert_eq!(lookup(Some("chatglm-bpe")), None);
    }

    fn onig_compiles(re: &str) -> bool {
        tokenizers::pre_tokenizers::split::Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_owned()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .is_ok()
    }
}
