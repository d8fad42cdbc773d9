//! The chat model with real weights: tokenizer ids, template, greedy and seeded generation,
//! stop strings and budgets.

use serde_json::json;
use wattmesh_engine::template::TemplateMessage;

use crate::common::{CHAT, CHAT_NAME, chat, germany, post};

#[test]
fn tokenizer_matches_llama_cpp_ids() {
    let chat = CHAT.chat("test").unwrap();
    let tok = chat.tokenizer();
    // (text, ids). SmolLM2's ids: digits split one by one, special tokens single ids.
    let table: &[(&str, &[u32])] = &[
        ("Hello, world!", &[19556, 28, 905, 17]),
        ("12345", &[33, 34, 35, 36, 37]),
        (" leading space", &[2899, 1898]),
        ("émoji 🚀", &[2756, 15771, 10381, 15107, 244, 218]),
        (
            "<|im_start|>user\nhi<|im_end|>\n",
            &[1, 4093, 198, 6004, 2, 198],
        ),
        ("<|im_end|>", &[2]),
        ("<|endoftext|>", &[0]),
    ];
    for (text, ids) in table {
        assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
    }
    for text in [
        "Hello, world!",
        "12345",
        " leading space",
        "émoji 🚀",
        "tabs\tand\nnewlines  x",
        "日本語",
    ] {
        assert_eq!(
            tok.decode(&tok.encode(text).unwrap()),
            text,
            "round trip {text:?}"
        );
    }
    assert_eq!(tok.special_id("<|im_end|>"), Some(2));
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
}

#[test]
fn template_adds_the_default_system_prompt() {
    let chat = CHAT.chat("test").unwrap();
    let user = TemplateMessage {
        role: "user".into(),
        content: "Hi".into(),
    };
    assert_eq!(
        chat.template().render(std::slice::from_ref(&user)).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let system = TemplateMessage {
        role: "system".into(),
        content: "Be terse.".into(),
    };
    assert_eq!(
        chat.template().render(&[system, user]).unwrap(),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[tokio::test]
async fn greedy_chat_answers_berlin_with_exact_usage() {
    let body = json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0});
    let first = chat(body.clone()).await;
    let content = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("Berlin"), "{first}");
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    assert_eq!(first["choices"][0]["finish_reason"], "stop");

    let model = CHAT.chat("test").unwrap();
    let rendered = model
        .template()
        .render(&[TemplateMessage {
            role: "user".into(),
            content: "What is the capital of Germany?".into(),
        }])
        .unwrap();
    let prompt_tokens = model.tokenizer().encode(&rendered).unwrap().len() as u64;
    let usage = &first["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "{usage}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion >= 1);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        prompt_tokens + completion
    );

    // A clean KV cache per request: the same request gives the same answer and usage.
    let second = chat(body).await;
    assert_eq!(second["choices"], first["choices"]);
    assert_eq!(second["usage"], first["usage"]);
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let body = json!({"model": CHAT_NAME, "messages": [{"role": "user", "content": "Tell me a story."}],
        "temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_tokens": 24});
    let a = chat(body.clone()).await;
    let b = chat(body).await;
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    assert!(
        !a["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{a}"
    );
}

#[tokio::test]
async fn stop_strings_and_max_tokens_are_honoured() {
    let stopped = chat(
        json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0,
        "stop": ["Berlin"]}),
    )
    .await;
    let content = stopped["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        !content.contains("Berlin") && !content.is_empty(),
        "{stopped}"
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    let cut = chat(
        json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0,
        "max_tokens": 3}),
    )
    .await;
    assert_eq!(cut["choices"][0]["finish_reason"], "length", "{cut}");
    assert_eq!(cut["usage"]["completion_tokens"], 3);
    // `max_completion_tokens` is the newer name and wins.
    let cut = chat(
        json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0,
        "max_tokens": 9, "max_completion_tokens": 2}),
    )
    .await;
    assert_eq!(cut["usage"]["completion_tokens"], 2, "{cut}");
}

#[tokio::test]
async fn completions_use_the_raw_prompt_and_default_budget() {
    let (status, body) = post(
        &CHAT,
        "/v1/completions",
        json!({"model": CHAT_NAME, "prompt": "1, 2, 3, 4, 5,", "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    // "1, 2, 3, 4, 5," is 14 tokens: digits split singly, no template, no BOS.
    assert_eq!(body["usage"]["prompt_tokens"], 14, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(" 6"), "{body}");
    if body["choices"][0]["finish_reason"] == "length" {
        assert_eq!(body["usage"]["completion_tokens"], 16);
    }
}
