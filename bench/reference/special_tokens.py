"""llama.cpp's ids for chat-shaped prompts with special tokens, for the engine's tokenizer test
(crates/engine/tests/engine/tokenizer_vocab.rs). llama.cpp's own vocab test inputs hold no
special-token text; these cases check what a chat prompt needs: special tokens cut out of the
text as single ids, SentencePiece's space prefix after each of them, and BOS for text prompts.

Tokenizes with llama-cpp-python on llama.cpp's vocab-only GGUFs (scripts/fetch-vocabs), as
llama_tokenize(add_special, parse_special=True): `ids` without BOS (what a chat prompt gets),
`ids_bos` with add_special=True (what a text completion gets). Needs the llama-cpp-python that
bench/engine builds:

    target/bench/venv/bin/python bench/reference/special_tokens.py
"""

import argparse
import json
import os

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {
    "llama-spm": [
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST]",
        "<s>[INST] What is 2+2? [/INST] 4 </s><s>[INST] And 3+3? [/INST]",
        "Hello<unk>world",
        " </s> x",
        "a</s>b",
        "<s>",
        "</s>\n",
        "Hello world",
    ],
    "llama-bpe": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi 12345<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Hello world",
    ],
    "qwen2": [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n12345 hi<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|endoftext|>x<|im_end|>",
    ],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", default=os.path.join(ROOT, "target/test-data/vocab"))
    p.add_argument("--out", default=os.path.join(ROOT, "crates/engine/tests/data/llama_cpp_special_tokens.json"))
    a = p.parse_args()
    vocabs = {}
    for vocab, texts in CASES.items():
        llm = llama_cpp.Llama(model_path=os.path.join(a.vocabs, f"ggml-vocab-{vocab}.gguf"),
                              vocab_only=True, verbose=False)
        vocabs[vocab] = [{"text": t,
                          "ids": llm.tokenize(t.encode(), add_bos=False, special=True),
                          "ids_bos": llm.tokenize(t.encode(), add_bos=True, special=True)}
                         for t in texts]
    doc = {
        "about": "llama.cpp's token ids (llama-cpp-python " + llama_cpp.__version__ + ", "
                 "Llama.tokenize(special=True)) for prompts with special tokens on llama.cpp's "
                 "vocab-only GGUFs; ids: add_bos=False, ids_bos: add_bos=True. Made by "
                 "bench/reference/special_tokens.py.",
        "vocabs": vocabs,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{sum(len(v) for v in vocabs.values())} cases -> {a.out}")


if __name__ == "__main__":
    main()
