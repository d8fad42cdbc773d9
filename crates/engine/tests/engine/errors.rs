//! Broken inputs against the router: each gets the right 4xx and OpenAI's error envelope,
//! never a 500 or axum's plain-text rejection.

use serde_json::{Value, json};
use wattmesh_engine::Replica;

use crate::common::{CHAT, CHAT_NAME, EMBED, EMBED_NAME, call_raw};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn broken_requests_get_openai_errors() {
    let chat = |extra: Value| {
        let mut body = json!({"model": CHAT_NAME, "messages": user("hi")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let long_prompt = "hello ".repeat(3000);
    // Just over the engine's limit once wrapped in a request.
    let huge = "x".repeat(wattmesh_engine::server::MAX_BODY_BYTES);
    // (name, replica, method, path, body, status, expected code or None)
    type Case<'a> = (
        &'a str,
        &'a Replica,
        &'a str,
        &'a str,
        String,
        u16,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            r#"{"model":"#.into(),
            400,
            None,
        ),
        (
            "not json at all",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            "hello".into(),
            400,
            None,
        ),
        (
            "messages is a string",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            json!({"model": CHAT_NAME, "messages": "hi"}).to_string(),
            400,
            None,
        ),
        (
            "missing model",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            json!({"messages": user("hi")}).to_string(),
            400,
            None,
        ),
        (
            "temperature is a string",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            400,
            None,
        ),
        (
            "negative max_tokens",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"max_tokens": -1})),
            400,
            None,
        ),
        (
            "empty messages",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"messages": []})),
            400,
            None,
        ),
        (
            "unknown role",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            None,
        ),
        (
            "n=2",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"n": 2})),
            400,
            None,
        ),
        (
            "temperature 5",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"temperature": 5})),
            400,
            None,
        ),
        (
            "top_p 0",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"top_p": 0})),
            400,
            None,
        ),
        (
            "max_tokens 0",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            400,
            None,
        ),
        (
            "five stop strings",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            None,
        ),
        (
            "huge max_tokens",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1_000_000_000u64})),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "prompt longer than the context",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"messages": user(&long_prompt)})),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "completion prompt longer than the context",
            &CHAT,
            "POST",
            "/v1/completions",
            json!({"model": CHAT_NAME, "prompt": long_prompt}).to_string(),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "two completion prompts",
            &CHAT,
            "POST",
            "/v1/completions",
            json!({"model": CHAT_NAME, "prompt": ["a", "b"]}).to_string(),
            400,
            None,
        ),
        (
            "out-of-range prompt token",
            &CHAT,
            "POST",
            "/v1/completions",
            json!({"model": CHAT_NAME, "prompt": [1, 999999]}).to_string(),
            400,
            None,
        ),
        (
            "wrong model name",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"model": "gpt-4o"})),
            404,
            Some("model_not_found"),
        ),
        (
            "oversize body",
            &CHAT,
            "POST",
            "/v1/chat/completions",
            chat(json!({"messages": user(&huge)})),
            413,
            Some("request_too_large"),
        ),
        (
            "embeddings on a chat model",
            &CHAT,
            "POST",
            "/v1/embeddings",
            json!({"model": CHAT_NAME, "input": "x"}).to_string(),
            400,
            None,
        ),
        (
            "chat on an embedding model",
            &EMBED,
            "POST",
            "/v1/chat/completions",
            json!({"model": EMBED_NAME, "messages": user("hi")}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: empty list",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": []}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: empty string",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": ""}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: one empty string in a list",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": ["a", ""]}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: token arrays",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": [101, 102]}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: longer than 512 tokens",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": "word ".repeat(600)}).to_string(),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "embeddings: wrong dimensions",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": EMBED_NAME, "input": "x", "dimensions": 128}).to_string(),
            400,
            None,
        ),
        (
            "embeddings: wrong model",
            &EMBED,
            "POST",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "x"}).to_string(),
            404,
            Some("model_not_found"),
        ),
        (
            "unknown route",
            &CHAT,
            "GET",
            "/v1/nothing",
            String::new(),
            404,
            Some("not_found"),
        ),
        (
            "wrong method",
            &CHAT,
            "GET",
            "/v1/chat/completions",
            String::new(),
            405,
            Some("method_not_allowed"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, replica, method, path, body, status, code) in cases {
        let (got, bytes) = call_raw(replica, method, path, body).await;
        let json: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!(
                    "{name}: not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                ));
                continue;
            }
        };
        let err = &json["error"];
        let shaped = err["message"].is_string()
            && err["type"].is_string()
            && err
                .as_object()
                .is_some_and(|o| o.contains_key("param") && o.contains_key("code"));
        if got.as_u16() != status || !shaped || code.is_some_and(|c| err["code"] != c) {
            failures.push(format!(
                "{name}: got {got} {json}, want {status} code {code:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
