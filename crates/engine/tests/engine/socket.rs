//! The server over a real socket: `serve` with graceful shutdown, OpenAI streaming as a
//! client reads it, and a client that disconnects mid-stream.

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wattmesh_engine::Replica;

use crate::common::{CHAT_NAME, chat, germany, load_chat};

/// A replica served on a loopback port.
pub struct Server {
    pub base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub http: reqwest::Client,
}

/// The access token the test replicas are started with.
const TOKEN: &str = "replica-token-for-tests";

impl Server {
    pub async fn start(replica: Replica) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let access = wattmesh_engine::Access::Token(TOKEN.into());
        let task = tokio::spawn(wattmesh_engine::serve(
            listener,
            replica,
            access,
            shutdown.clone(),
        ));
        // Every test's client is a gateway: it holds the replica's token.
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        // The listener is bound before `serve` starts, so the first health check connects;
        // it must answer 200 for a loaded replica.
        let health = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        Self {
            base,
            shutdown,
            task,
            http,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// The value of the first sample whose line starts with `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

/// Reads an SSE body into its `data:` payloads.
async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    buf.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad frame {f:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn streaming_matches_openai_and_the_unstreamed_answer() {
    // Its own replica: this test reads the replica's counters.
    let server = Server::start(load_chat()).await;
    let resp = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .json(
            &json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0, "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The prompt's size comes before the first chunk, for the gateway to bill a cut stream.
    let told: u64 = resp.headers()["x-wattmesh-prompt-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let events = sse_events(resp).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let n = chunks.len();
    assert!(n >= 5, "expected several chunks: {chunks:?}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for c in &chunks[..n - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(
            c.as_object().unwrap().contains_key("usage") && c["usage"].is_null(),
            "{c}"
        );
    }
    let finish = &chunks[n - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage_chunk = &chunks[n - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    let content: String = chunks[1..n - 2]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    let plain = chat(json!({"model": CHAT_NAME, "messages": germany(), "temperature": 0})).await;
    assert_eq!(
        content,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(usage_chunk["usage"], plain["usage"]);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], json!(told));

    // Without include_usage: no usage key, no usage chunk.
    let resp = server
        .http
        .post(format!("{}/v1/completions", server.base))
        .json(
            &json!({"model": CHAT_NAME, "prompt": "Paris is", "max_tokens": 4, "temperature": 0,
            "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "text_completion");
        assert!(!c.as_object().unwrap().contains_key("usage"), "{c}");
    }
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");

    // A client that goes away mid-stream stops the generation: the next request is served
    // after it (one generation at a time), and far fewer than its budget were decoded.
    let before = server.metric("vllm:generation_tokens_total").await;
    let budget = 1500;
    let resp = server
        .http
        .post(format!("{}/v1/completions", server.base))
        .json(
            &json!({"model": CHAT_NAME, "prompt": "1, 2, 3, 4, 5,", "max_tokens": budget,
            "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let after_cut = server
        .http
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({"model": CHAT_NAME, "prompt": "Hi", "max_tokens": 1, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(after_cut.status(), 200);
    let decoded = server.metric("vllm:generation_tokens_total").await - before;
    assert!(
        decoded < 200.0,
        "decoded {decoded} tokens after the client left"
    );
    assert_eq!(server.metric("vllm:num_requests_running").await, 0.0);
    assert_eq!(server.metric("vllm:num_requests_waiting").await, 0.0);

    server.stop().await;
}

#[tokio::test]
async fn only_callers_with_the_replicas_token_are_served() {
    let server = Server::start(crate::common::EMBED.clone()).await;
    let anyone = reqwest::Client::new();
    let body = json!({"model": crate::common::EMBED_NAME, "input": "x"});
    for (what, token) in [
        ("no token", None),
        ("a wrong token", Some("not-the-token")),
        ("a customer's key", Some("sk-wm-0123456789")),
    ] {
        let mut req = anyone
            .post(format!("{}/v1/embeddings", server.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_api_key", "{what}: {err}");
    }
    // Probes and scrapers need no token; the gateway's calls are served.
    let health = anyone
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let served = server
        .http
        .post(format!("{}/v1/embeddings", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    server.stop().await;
}
