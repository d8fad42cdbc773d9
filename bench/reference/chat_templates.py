"""Reference renderings of real chat templates by Python's jinja2, for the engine's template test
(crates/engine/tests/engine/chat_templates.rs). Our ChatTemplate renders with minijinja, a
different implementation of the same language; this writes what jinja2 makes of each template
for a few plain conversations, the way transformers and llama-cpp-python render them
(sandboxed, trim_blocks, lstrip_blocks, loop controls, raise_exception, tojson).

The templates are the ones llama.cpp keeps in models/templates, extracted from the
llama-cpp-python sdist by scripts/fetch-vocabs. Each is stored in the JSON with its renderings,
so the Rust test needs neither Python nor the fetched files.

Usage: python3 bench/reference/chat_templates.py [--templates DIR] [--out FILE]
Needs jinja2 (3.x).
"""

import argparse
import json
import os

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (template file, bos_token, eos_token): templates that need only messages,
# add_generation_prompt, bos_token and eos_token; the tokens are those of the models' GGUFs.
TEMPLATES = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "<|endoftext|>", "<|im_end|>"),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
     "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"),
    ("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"),
    ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Germany?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "List three primary colors."}],
    [{"role": "system", "content": "Answer in French."},
     {"role": "user", "content": "Hi! My name is Ada."},
     {"role": "assistant", "content": "Bonjour Ada ! Comment puis-je vous aider ?"},
     {"role": "user", "content": "  Write a haiku about power grids.  "}],
]


def render(source, messages, bos, eos):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True,
                                          bos_token=bos, eos_token=eos)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--templates", default=os.path.join(ROOT, "target/test-data/vocab/templates"))
    p.add_argument("--out", default=os.path.join(ROOT, "crates/engine/tests/data/chat_templates.json"))
    a = p.parse_args()
    cases = []
    for name, bos, eos in TEMPLATES:
        with open(os.path.join(a.templates, name), encoding="utf-8") as f:
            source = f.read()
        renders = []
        for m in CONVERSATIONS:
            # A template may refuse a conversation (Gemma has no system role): the message
            # is the expected outcome then.
            try:
                renders.append({"messages": m, "rendered": render(source, m, bos, eos)})
            except jinja2.exceptions.TemplateError as e:
                renders.append({"messages": m, "error": str(e)})
        cases.append({"template": name, "bos_token": bos, "eos_token": eos, "source": source,
                      "renders": renders})
    doc = {
        "about": "Chat templates from llama.cpp's models/templates (llama-cpp-python 0.3.36 sdist) "
                 "rendered by Python jinja2 " + jinja2.__version__ + " (sandboxed, trim_blocks, "
                 "lstrip_blocks, loopcontrols, add_generation_prompt=True). Made by "
                 "bench/reference/chat_templates.py.",
        "cases": cases,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(cases)} templates x {len(CONVERSATIONS)} conversations -> {a.out}")


if __name__ == "__main__":
    main()
